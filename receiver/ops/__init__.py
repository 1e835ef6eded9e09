"""What operators do with stored events: list, show, replay, audit, re-encrypt, check.

The queries and actions behind ``receiver events …``, ``replay``, ``send-test`` and
``config check`` (SPEC §7), one concern per module. No click here: the CLI parses, calls
these, and prints. Everything meant for printing comes out redacted unless the caller asks
for raw data. Callers use ``from receiver import ops`` and the names re-exported below.
"""

from receiver.ops.audit import AuditEntry, audit_filter, current_user, list_audit, write_audit
from receiver.ops.check import Check, ConfigReport, check_config, describe_settings, init_sink
from receiver.ops.credits import CreditLedger, CreditReport, CreditRow
from receiver.ops.events import (
    EventDetail,
    EventFilter,
    FilterError,
    Progress,
    iso_ms,
    list_events,
    load_many,
    parse_time_bound,
    redacted_body,
    show_event,
    summary,
)
from receiver.ops.reencryption import ReencryptResult, reencrypt
from receiver.ops.replays import ReplayResult, existing, replay
from receiver.ops.send_test import (
    Delivery,
    NoSigningSecret,
    build_delivery,
    post_delivery,
    sample_body,
)

__all__ = [
    "AuditEntry",
    "Check",
    "ConfigReport",
    "CreditLedger",
    "CreditReport",
    "CreditRow",
    "Delivery",
    "EventDetail",
    "EventFilter",
    "FilterError",
    "NoSigningSecret",
    "Progress",
    "ReencryptResult",
    "ReplayResult",
    "audit_filter",
    "build_delivery",
    "check_config",
    "current_user",
    "describe_settings",
    "existing",
    "init_sink",
    "iso_ms",
    "list_audit",
    "list_events",
    "load_many",
    "parse_time_bound",
    "post_delivery",
    "redacted_body",
    "reencrypt",
    "replay",
    "sample_body",
    "show_event",
    "summary",
    "write_audit",
]
