"""What the console keeps in Redis beside the events: its session signing key and the
members of bulk replays it started (so their page can follow them). Few, small keys under
one hash tag, never touched by ingest."""

from __future__ import annotations

from collections.abc import Sequence

from receiver.batching import AutoPipeline, Script
from receiver.keys import CONSOLE_REPLAY_TTL_SECONDS, CONSOLE_SESSION_KEY, console_replay
from receiver.store import replies


class ConsoleData:
    """The session key (made once, shared by every replica) and replay member lists."""

    def __init__(self, pipeline: AutoPipeline, session_key: Script, members: Script) -> None:
        self._pipeline = pipeline
        self._session_key = session_key
        self._members = members

    async def prepare(self) -> None:
        await self._session_key.load()
        await self._members.load()

    async def session_key(self, fresh: bytes) -> bytes:
        """The key in force; ``fresh`` becomes it if there is none yet (one script)."""
        key = await self._session_key((CONSOLE_SESSION_KEY,), (fresh,))
        return bytes(key)

    async def remember_replay(self, audit_id: str, members: Sequence[str]) -> None:
        """Keep a bulk replay's members for ``CONSOLE_REPLAY_TTL_SECONDS``."""
        if members:
            await self._members(
                (console_replay(audit_id),), (CONSOLE_REPLAY_TTL_SECONDS * 1000, *members)
            )

    async def replay_members(self, audit_id: str, limit: int) -> list[str]:
        """The members of a bulk replay (at most ``limit``), [] once forgotten."""
        reply = await self._pipeline.execute("LRANGE", console_replay(audit_id), 0, limit - 1)
        return [replies.text(member) for member in reply or []]
