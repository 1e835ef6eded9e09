"""The audit log in Redis: one capped stream of operator actions (replays, resolves)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from receiver.batching import AutoPipeline
from receiver.keys import AUDIT_MAX_ENTRIES, AUDIT_STREAM
from receiver.store import replies


class AuditLog:
    """Appends entries (trimmed approximately) and reads them newest first."""

    def __init__(self, pipeline: AutoPipeline) -> None:
        self._pipeline = pipeline

    async def append(self, fields: Mapping[str, str]) -> str:
        args: list[Any] = []
        for name, value in fields.items():
            args += (name, value)
        entry_id = await self._pipeline.execute(
            "XADD", AUDIT_STREAM, "MAXLEN", "~", AUDIT_MAX_ENTRIES, "*", *args
        )
        return replies.text(entry_id)

    async def newest(
        self, count: int, before: str | None = None
    ) -> list[tuple[str, dict[str, str]]]:
        upper = f"({before}" if before else "+"
        reply = await self._pipeline.execute("XREVRANGE", AUDIT_STREAM, upper, "-", "COUNT", count)
        return replies.stream_entries(reply)
