"""``receiver gen-secret`` and ``receiver gen-key``: new keys, printed once."""

from __future__ import annotations

import base64
import secrets

import click


@click.command("gen-secret")
def gen_secret() -> None:
    """Print a fresh whsec_ signing secret (32 random bytes)."""
    click.echo("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())


@click.command("gen-key")
def gen_key() -> None:
    """Print a new Fernet key for RECEIVER_ENCRYPTION_KEYS."""
    from cryptography.fernet import Fernet

    click.echo(Fernet.generate_key().decode())


@click.command("admin-token")
@click.argument("name")
@click.argument("role", type=click.Choice(["viewer", "operator"]))
def admin_token(name: str, role: str) -> None:
    """Print a new console/API token for NAME (line 1) and its users-file line (line 2).

    The token is shown once and never stored: only its hash goes into
    RECEIVER_ADMIN_USERS_FILE. Give the token to NAME; append the line to the file.
    """
    from receiver.console.users import Role, new_token, users_file_line

    token = new_token()
    try:
        line = users_file_line(name, Role(role), token)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    click.echo(token)
    click.echo(line)
    click.echo(
        "receiver: line 1 is the token (shown once; give it to the person), line 2 goes "
        "into RECEIVER_ADMIN_USERS_FILE",
        err=True,
    )
