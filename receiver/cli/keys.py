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
