"""The reconciler: poll Rivya's status API for watched tasks that are due, politely.

Each round claims due tasks under a lease (``watch``), asks the shared gate
(``pollgate``) for a slot for each request under the global rate, hands back what got no
slot, and polls the rest concurrently, each at its slot. A lease is
renewed while its request runs and released when the answer is settled, so several
reconcilers never poll one task at once, and one killed mid-batch loses no watch (its
leases run out and the tasks are due again). What each answer means:

- a generation: stored and queued as a ``rivya-poll`` event through ``EventStore.accept``
  (dedup, ordering guard and all, like a webhook); a terminal state ends the watch, any
  other is checked again later with backoff (``schedule``), until it is given up;
- 404: the watch ends with a dead ``unknown_task`` event;
- 429: every reconciler pauses for the Retry-After;
- 401/403: every reconciler stops and one probe per minute checks the key again; one error
  line per minute per process, ``receiver_reconcile_key_refused`` 1;
- 5xx, timeouts, unreadable answers: retried sooner, with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable

from receiver import metrics
from receiver.logs import get_logger
from receiver.models import STATUS_RANK, TERMINAL_RANK, ReasonCode
from receiver.reconcile import schedule
from receiver.reconcile.api import DEFAULT_TIMEOUT_SECONDS, Answer, AnswerKind, StatusApi
from receiver.reconcile.events import ended_event, poll_event
from receiver.reconcile.status import refresh_gauges
from receiver.redis_client import REDIS_ERRORS
from receiver.runtime import Runtime
from receiver.store import AcceptResult, IncomingEvent, now_ms
from receiver.store.pollgate import REFUSED_RECHECK_SECONDS
from receiver.store.watch import ClaimedTask, Release

log = get_logger("receiver.reconcile")
# Requests one reconciler has in flight at most.
MAX_IN_FLIGHT = 16
# A 429 without a usable Retry-After pauses everyone this long.
DEFAULT_RATE_LIMIT_PAUSE_SECONDS = 30.0
# How often the gauges (watched tasks, oldest age, key refused) are refreshed.
GAUGE_INTERVAL_SECONDS = 5.0
MAX_IDLE_SECONDS = 1.0
# After a round fails with anything but a Redis error (a bug, a reply we cannot read), the
# loop waits this long before the next: long enough not to flood the log, short enough
# that the other tasks are still polled (the failed round's claims wait out their lease).
ROUND_FAILED_PAUSE_SECONDS = 5.0


class Reconciler:
    """Polls due watched tasks until ``stop()``. One per process; several may share Redis."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.settings = settings
        self.store = runtime.store
        self.watch = runtime.store.watch
        self.gate = runtime.store.poll_gate
        self.api = StatusApi(
            settings.rivya_api_url,
            settings.require_api_key(),
            settings.rivya_api_key_header,
            max_answer_bytes=settings.max_body_bytes,
            timeout_seconds=timeout_seconds,
            max_connections=MAX_IN_FLIGHT,
        )
        self._clock = clock
        self._rate = settings.reconcile_rate
        # Requests asked of the gate at a time: about a tenth of a second's worth, so a
        # reconciler's requests are spread over the second rather than sent in one burst.
        self._per_take = max(1, math.ceil(self._rate / 10))
        self._idle_seconds = min(MAX_IDLE_SECONDS, max(0.01, settings.reconcile_after_seconds / 2))
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._held: dict[str, ClaimedTask] = {}
        self._polls: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._loop_done = asyncio.Event()
        self._key_refused = False
        self._last_refused_log = -math.inf

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until ``stop()``; Redis outages are waited out, and a round that fails for
        any other reason is logged and followed by the next: one bad task must not stop
        the reconciliation of every other (inside ``serve`` nothing would restart it)."""
        helpers = [
            asyncio.create_task(self._renew_leases(), name="reconcile-leases"),
            asyncio.create_task(self._refresh_gauges(), name="reconcile-gauges"),
        ]
        log.info(
            "reconciler_started",
            api=self.api.base_url,
            rate_per_second=self._rate,
            after_s=self.settings.reconcile_after_seconds,
            max_age_s=self.settings.reconcile_max_age_seconds,
        )
        try:
            while not self._stopping.is_set():
                try:
                    await self._round()
                except REDIS_ERRORS as exc:
                    log.warning("reconcile_redis_failed", error=type(exc).__name__)
                    await self._pause(1.0)
                except Exception:
                    log.exception("reconcile_round_failed")
                    await self._pause(ROUND_FAILED_PAUSE_SECONDS)
        finally:
            self._loop_done.set()
            for helper in helpers:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper

    async def stop(self, grace_seconds: float) -> None:
        """Stop taking tasks; let requests in flight settle within ``grace_seconds``.

        Whatever is still unsettled is cancelled; its leases run out and the tasks are due
        again for the next reconciler."""
        deadline = time.monotonic() + grace_seconds
        self._stopping.set()
        # First the loop (so no new request starts), then the requests it started.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._loop_done.wait(), grace_seconds)
        if self._polls:
            remaining = max(0.0, deadline - time.monotonic())
            _, unfinished = await asyncio.wait(list(self._polls), timeout=remaining)
            for task in unfinished:
                task.cancel()
            for task in unfinished:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.api.aclose()
        log.info("reconciler_stopped")

    async def _round(self) -> None:
        free = await self._acquire_slots()
        starts: list[tuple[ClaimedTask, float]] = []
        probe = False
        wait = self._idle_seconds
        try:
            claimed = await self.watch.claim(free)
            if claimed:
                grant = await self.gate.take(len(claimed), self._rate)
                self._note_refused_flag(grant.refused)
                # While the key is refused, a grant is the one probe that checks it again.
                probe = grant.refused
                starts = list(zip(claimed, grant.offsets, strict=False))
                # Slots for fewer than we claimed (a pause, the rate): the rest are due
                # again at once, their counts unchanged, for whoever gets the next slots.
                await self._hand_back(claimed[len(starts) :])
                # Come back for more when this round's last slot has come.
                wait = (
                    starts[-1][1]
                    if starts
                    else min(max(grant.wait_seconds, 0.01), MAX_IDLE_SECONDS)
                )
        except BaseException:
            # Tasks claimed before the failure keep their lease until it runs out.
            for _ in range(free):
                self._slots.release()
            raise
        for _ in range(free - len(starts)):
            self._slots.release()
        for task, offset in starts:
            self._held[task.task_id] = task
            poll = asyncio.create_task(self._poll(task, offset, probe=probe))
            self._polls.add(poll)
            poll.add_done_callback(self._polled)
        await self._pause(wait)

    async def _hand_back(self, tasks: list[ClaimedTask]) -> None:
        if tasks:
            due = self._clock()
            await self.watch.release(
                [
                    Release(t, drop=False, due_ms=due, checks=t.checks, errors=t.errors)
                    for t in tasks
                ]
            )

    async def _acquire_slots(self) -> int:
        """Wait for one free request slot, then take up to a round's worth without waiting."""
        await self._slots.acquire()
        free = 1
        while free < self._per_take and not self._slots.locked():
            await self._slots.acquire()
            free += 1
        return free

    def _polled(self, poll: asyncio.Task[None]) -> None:
        self._polls.discard(poll)
        self._slots.release()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- one task ------------------------------------------------------------------------

    async def _poll(self, task: ClaimedTask, start_in: float, *, probe: bool = False) -> None:
        task_id = task.task_id
        try:
            if start_in > 0:
                await asyncio.sleep(start_in)  # this request's slot under the shared rate
            if not probe and await self.gate.paused():
                # A 429 or a refused key since the slot was given: not now, not this one.
                await self._hand_back([task])
                return
            answer = await self.api.fetch(task_id)
            release = await self._settle(task, answer)
            await self.watch.release([release])
        except REDIS_ERRORS as exc:
            # The lease runs out and the task is due again: nothing is lost.
            log.warning("reconcile_poll_interrupted", record_key=task_id, error=type(exc).__name__)
        except Exception:
            # A bug: logged (redacted) with its traceback; the lease runs out and the task
            # is due again, so a fix and a restart still reconcile it.
            log.exception("reconcile_poll_crashed", record_key=task_id)
        finally:
            self._held.pop(task_id, None)

    async def _settle(self, task: ClaimedTask, answer: Answer) -> Release:
        """Store what the answer says and decide what becomes of the watch."""
        now = self._clock()
        settings = self.settings
        after = settings.reconcile_after_seconds
        if answer.kind is AnswerKind.REFUSED:
            self._outcome("refused")
            await self._refused(answer)
            # Due at once: the gate's pause holds every request until the recheck, and the
            # recheck's probe should find a task waiting.
            return self._again(task, now, 0, task.checks, task.errors)
        if self._key_refused:
            await self.gate.accepted()
            self._note_refused_flag(False)
        if answer.kind is AnswerKind.RATE_LIMITED:
            self._outcome("rate_limited")
            pause = answer.retry_after_seconds
            pause = DEFAULT_RATE_LIMIT_PAUSE_SECONDS if pause is None else pause
            await self.gate.pause(pause)
            log.warning("reconcile_rate_limited", record_key=task.task_id, pause_s=pause)
            # Due at once too: the pause holds everyone, this task included.
            return self._again(task, now, 0, task.checks, task.errors)
        if answer.kind is AnswerKind.NOT_FOUND:
            self._outcome("unknown_task")
            error = f"unknown_task: Rivya's status API answered 404 for {task.task_id}; watch ended"
            await self._end(task, ReasonCode.UNKNOWN_TASK, error, now)
            return Release(task, drop=True)
        if answer.kind is AnswerKind.GENERATION:
            assert answer.generation is not None
            return await self._generation(task, answer.generation, now)
        # A transient failure: sooner, with backoff, unless the task is past its age.
        self._outcome(answer.kind.value)
        errors = task.errors + 1
        log.warning(
            "reconcile_poll_failed",
            record_key=task.task_id,
            outcome=answer.kind.value,
            status=answer.status,
            error=answer.detail,
            errors=errors,
        )
        if schedule.expired(now, task.since_ms, settings.reconcile_max_age_seconds):
            await self._give_up(task, now, f"the last check failed: {answer.detail}")
            return Release(task, drop=True)
        return self._again(task, now, schedule.retry_interval(errors, after), task.checks, errors)

    async def _generation(
        self, task: ClaimedTask, generation: dict[str, object], now: int
    ) -> Release:
        settings = self.settings
        event = poll_event(task.task_id, generation, self.runtime.cipher, now)
        result = await self.store.accept(event)
        status = str(generation.get("status"))
        terminal = STATUS_RANK.get(status, -1) == TERMINAL_RANK
        self._outcome("terminal" if terminal else "in_progress")
        log.info(
            "reconcile_polled",
            source=event.source,
            event_id=event.event_id,
            record_key=task.task_id,
            status=status,
            outcome="new" if result is AcceptResult.NEW else "duplicate",
            checks=task.checks + 1,
        )
        if terminal:
            # Stored and queued: the worker applies it through the guard. Its watch ends
            # now, whether this poll was new or an unchanged state seen before.
            return Release(task, drop=True)
        if schedule.expired(now, task.since_ms, settings.reconcile_max_age_seconds):
            await self._give_up(task, now, f"Rivya still reports {status}", generation)
            return Release(task, drop=True)
        checks = task.checks + 1
        interval = schedule.check_interval(checks, settings.reconcile_after_seconds)
        return self._again(task, now, interval, checks, 0)

    def _again(
        self, task: ClaimedTask, now: int, delay_seconds: float, checks: int, errors: int
    ) -> Release:
        due = schedule.next_due_ms(
            now, delay_seconds, task.since_ms, self.settings.reconcile_max_age_seconds
        )
        return Release(task, drop=False, due_ms=due, checks=checks, errors=errors)

    async def _give_up(
        self,
        task: ClaimedTask,
        now: int,
        why: str,
        generation: dict[str, object] | None = None,
    ) -> None:
        age_h = (now - task.since_ms) / 3_600_000
        error = (
            f"gave_up: {task.task_id} not finished after {age_h:.1f} h of watching "
            f"(RECEIVER_RECONCILE_MAX_AGE); {why}"
        )
        self._outcome("gave_up")
        await self._end(task, ReasonCode.GAVE_UP, error, now, generation)

    async def _end(
        self,
        task: ClaimedTask,
        reason: ReasonCode,
        error: str,
        now: int,
        generation: dict[str, object] | None = None,
    ) -> None:
        event: IncomingEvent = ended_event(
            task.task_id, reason, error, task.since_ms, self.runtime.cipher, now, generation
        )
        await self.store.accept(event)
        log.warning(
            "reconcile_watch_ended",
            source=event.source,
            event_id=event.event_id,
            record_key=task.task_id,
            reason_code=reason.value,
            error=error,
        )

    async def _refused(self, answer: Answer) -> None:
        await self.gate.refused(answer.status)
        self._note_refused_flag(True)
        # One line a minute at most: a revoked key must not flood the log.
        if time.monotonic() - self._last_refused_log >= REFUSED_RECHECK_SECONDS:
            self._last_refused_log = time.monotonic()
            log.error(
                "reconcile_key_refused",
                status=answer.status,
                detail=(
                    "Rivya refused RECEIVER_RIVYA_API_KEY (wrong or revoked); polling stops "
                    f"and one request checks it again every {REFUSED_RECHECK_SECONDS:g} s"
                ),
            )

    def _note_refused_flag(self, refused: bool) -> None:
        if refused != self._key_refused:
            self._key_refused = refused
            metrics.RECONCILE_KEY_REFUSED.set(1 if refused else 0)
            if not refused:
                log.info("reconcile_key_accepted")

    def _outcome(self, outcome: str) -> None:
        metrics.child(metrics.RECONCILE_POLLS, outcome).inc()

    # -- helpers ---------------------------------------------------------------------------

    async def _renew_leases(self) -> None:
        """Keep the leases of requests still running, so a slow answer is not polled twice."""
        interval = self.watch.lease_ms / 3000
        while True:
            await asyncio.sleep(interval)
            held = list(self._held.values())
            if not held:
                continue
            try:
                renewed = await self.watch.renew(held)
            except REDIS_ERRORS as exc:
                log.warning("reconcile_lease_renewal_failed", error=type(exc).__name__)
                continue
            for task, still_held in zip(held, renewed, strict=True):
                if not still_held and task.task_id in self._held:
                    # Ended meanwhile (a terminal webhook) or taken over after a stall.
                    log.info("reconcile_lease_ended", record_key=task.task_id)

    async def _refresh_gauges(self) -> None:
        while True:
            with contextlib.suppress(*REDIS_ERRORS):
                await refresh_gauges(self.store)
            await asyncio.sleep(GAUGE_INTERVAL_SECONDS)
