"""What operators do with stored events: list, show, replay, resolve, audit, status, …

The ops layer behind ``receiver events …``, ``replay``, ``deliveries``, ``status``,
``records``, ``send-test``, ``config check`` (SPEC §7, §10) and the web console; one
concern per module, every Redis read and write through the ``EventStore``. No click here:
front ends parse, call these, and print or serve. Everything meant for output has a
``to_json()`` that is redacted unless the caller asks for raw data. The API is described
in /work/coord/OPS_API.md. Callers use ``from receiver import ops``.
"""

from receiver.ops.audit import (
    AuditEntry,
    audit_filter,
    current_user,
    list_audit,
    resolve_actor,
    write_audit,
)
from receiver.ops.check import Check, ConfigReport, check_config, describe_settings, init_sink
from receiver.ops.credits import CreditLedger, CreditReport, CreditRow
from receiver.ops.events import (
    CONSOLE_SCAN_BUDGET,
    CursorError,
    EventDetail,
    EventFilter,
    EventPage,
    FilterError,
    Progress,
    iso_ms,
    list_events,
    load_many,
    parse_time_bound,
    redacted_body,
    select_all,
    show_event,
    summary,
    summary_json,
)
from receiver.ops.records import RecordView, show_record
from receiver.ops.reencryption import ReencryptResult, count_stored, reencrypt
from receiver.ops.rejections import (
    RejectedDelivery,
    RejectedPage,
    get_rejected,
    list_rejected,
    rejected_counts,
)
from receiver.ops.replays import (
    ReplayOutcomes,
    ReplayPlan,
    ReplayResult,
    execute_replay,
    existing,
    plan_replay,
    replay,
    wait_for_outcomes,
)
from receiver.ops.resolution import ResolveResult, check_reason, resolve
from receiver.ops.selection import Selection
from receiver.ops.send_test import (
    Delivery,
    NoSigningSecret,
    build_delivery,
    post_delivery,
    sample_body,
)
from receiver.ops.status import KeyUse, Status, WorkerInfo, live_workers, status
from receiver.ops.traffic import MinuteTraffic, deliveries_per_minute
from receiver.ops.watching import TaskIdError, TrackResult, check_task_ids, track_tasks
from receiver.reconcile.status import WatchStatus, watch_status

__all__ = [
    "CONSOLE_SCAN_BUDGET",
    "AuditEntry",
    "Check",
    "ConfigReport",
    "CreditLedger",
    "CreditReport",
    "CreditRow",
    "CursorError",
    "Delivery",
    "EventDetail",
    "EventFilter",
    "EventPage",
    "FilterError",
    "KeyUse",
    "MinuteTraffic",
    "NoSigningSecret",
    "Progress",
    "RecordView",
    "ReencryptResult",
    "RejectedDelivery",
    "RejectedPage",
    "ReplayOutcomes",
    "ReplayPlan",
    "ReplayResult",
    "ResolveResult",
    "Selection",
    "Status",
    "TaskIdError",
    "TrackResult",
    "WatchStatus",
    "WorkerInfo",
    "audit_filter",
    "build_delivery",
    "check_config",
    "check_reason",
    "check_task_ids",
    "count_stored",
    "current_user",
    "deliveries_per_minute",
    "describe_settings",
    "execute_replay",
    "existing",
    "get_rejected",
    "init_sink",
    "iso_ms",
    "list_audit",
    "list_events",
    "list_rejected",
    "live_workers",
    "load_many",
    "parse_time_bound",
    "plan_replay",
    "post_delivery",
    "redacted_body",
    "reencrypt",
    "rejected_counts",
    "replay",
    "resolve",
    "resolve_actor",
    "sample_body",
    "select_all",
    "show_event",
    "show_record",
    "status",
    "summary",
    "summary_json",
    "track_tasks",
    "wait_for_outcomes",
    "watch_status",
    "write_audit",
]
