"""Retry timing: capped exponential backoff, bounded by a time budget (SPEC §4, issue 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.retries import RetryPolicy, backoff_delay
from receiver.settings import Settings
from tests.conftest import TEST_SECRET

HOUR_MS = 3_600_000


def default_policy(tmp_path: Path, **environ: str) -> RetryPolicy:
    """The policy the shipped defaults give (plus ``environ``)."""
    settings = Settings.from_env(
        {"RECEIVER_WEBHOOK_SECRET": TEST_SECRET, "RECEIVER_DATA_DIR": str(tmp_path), **environ}
    )
    return RetryPolicy.from_settings(settings)


def attempts_until_given_up(policy: RetryPolicy, outage_ms: int) -> tuple[int, int, bool]:
    """Fail every attempt of one event for ``outage_ms`` (waiting each delay out): the
    attempts made, the time they covered, and whether it was given up within the outage."""
    now = first_failed = 0
    attempt = 1
    while now < outage_ms:
        delay = policy.next_delay(attempt, first_failed, now)
        if delay is None:
            return attempt, now, True
        now += int(delay * 1000)
        attempt += 1
    return attempt, now, False


class TestBackoff:
    @pytest.mark.parametrize(("attempt", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (10, 60.0)])
    def test_delay_is_exponential_with_jitter_and_capped(
        self, attempt: int, ceiling: float
    ) -> None:
        """Delays double per attempt, are jittered into [ceiling/2, ceiling], and are capped."""
        delays = [backoff_delay(attempt, 1.0, 60.0) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1

    def test_a_very_high_attempt_number_stays_at_the_cap(self) -> None:
        """Hundreds of attempts (a day of retries) neither overflow nor pass the cap."""
        assert 150 <= backoff_delay(5000, 1.0, 300.0) <= 300


class TestBudget:
    def test_defaults_survive_an_outage_of_hours(self, tmp_path: Path) -> None:
        """With the shipped settings an event failing for 6 hours is still being retried,
        far past the old budget of 8 attempts (~2 minutes), at most 5 minutes apart."""
        policy = default_policy(tmp_path)
        attempts, _, given_up = attempts_until_given_up(policy, 6 * HOUR_MS)
        assert (given_up, attempts > 8) == (False, True)
        assert policy.next_delay(attempts, 0, 6 * HOUR_MS) <= 300  # type: ignore[operator]

    def test_defaults_give_up_after_a_day(self, tmp_path: Path) -> None:
        """RECEIVER_RETRY_FOR (24 h by default) ends the retries, counted from the first failure."""
        policy = default_policy(tmp_path)
        attempts, covered, given_up = attempts_until_given_up(policy, 30 * HOUR_MS)
        assert given_up
        assert 24 * HOUR_MS <= covered < 24 * HOUR_MS + 1000
        assert policy.next_delay(attempts, 5 * HOUR_MS, 28 * HOUR_MS) is not None

    def test_the_last_delay_ends_with_the_budget(self, tmp_path: Path) -> None:
        """A backoff longer than what is left of the budget is cut to what is left."""
        policy = default_policy(tmp_path, RECEIVER_RETRY_FOR="10s", RECEIVER_RETRY_BASE="8s")
        assert policy.next_delay(3, 0, 7_500) == pytest.approx(2.5)
        assert policy.next_delay(3, 0, 10_000) is None

    def test_an_explicit_max_attempts_caps_the_count(self, tmp_path: Path) -> None:
        """RECEIVER_MAX_ATTEMPTS, when set, gives up after that many attempts within the budget."""
        policy = default_policy(tmp_path, RECEIVER_MAX_ATTEMPTS="3")
        assert policy.next_delay(2, 0, 1000) is not None
        assert policy.next_delay(3, 0, 1000) is None
        assert policy.describe_give_up(3, 0, 4_200) == "gave up after 3 attempts in 4.2s"
