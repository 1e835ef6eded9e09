"""The ``receiver`` command line: thin commands over the functions the service uses.

Exit codes (SPEC §7): 0 success, 1 failure (including a bad configuration), 2 usage; the
one map from errors to exit codes is ``receiver.cli.common.ReceiverGroup``.
"""

from __future__ import annotations

import click

from receiver.cli.common import ReceiverGroup
from receiver.cli.config import config, sink
from receiver.cli.deliveries import deliveries
from receiver.cli.events import events
from receiver.cli.keys import admin_token, gen_key, gen_secret
from receiver.cli.reconcile import reconcile, track
from receiver.cli.records import records
from receiver.cli.replay import replay
from receiver.cli.send_test import send_test
from receiver.cli.service import console, serve, worker
from receiver.cli.status import status
from receiver.cli.verify import verify

__all__ = ["main"]


@click.group(cls=ReceiverGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="receiver")
def main() -> None:
    """Receive signed Rivya webhooks, store them durably, apply them to one record each."""


for _command in (
    serve, worker, console, events, replay, deliveries, status, records, verify, send_test,
    config, sink, gen_secret, gen_key, admin_token, track, reconcile,
):  # fmt: skip
    main.add_command(_command)
