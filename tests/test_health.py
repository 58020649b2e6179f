"""The self-healing watcher's decisions (lockfs.health) on made-up samples and times: a live
daemon is never taken for a failed one, a dead one is recognized at once, a silent one only
after its hang_timeout, and at most 3 failures in 10 minutes are recovered."""

from __future__ import annotations

import pytest

from lockfs.health import (
    LATE_GAP,
    POLL_INTERVAL,
    RECOVERIES,
    WINDOW,
    FailureBudget,
    Health,
    HealthJudge,
    Sample,
    running_grace,
)

MOUNT = 42


def silent_until(judge: HealthJudge, start: float, end: float, **flags: bool) -> list[Health]:
    """Samples without an answer every POLL_INTERVAL from ``start`` to ``end``; the verdicts."""
    verdicts, at = [], start
    while at <= end + 1e-9:
        verdicts.append(judge.judge(Sample(at, MOUNT, **flags)))
        at += POLL_INTERVAL
    return verdicts


def first_hung(judge: HealthJudge, start: float, **flags: bool) -> float:
    """The time of the first HUNG verdict of samples without an answer from ``start`` on."""
    at = start
    while judge.judge(Sample(at, MOUNT, **flags)) is not Health.HUNG:
        at += POLL_INTERVAL
        assert at < start + 1000, "never hung"
    return at


def test_a_daemon_that_answers_is_alive_whatever_came_before() -> None:
    judge = HealthJudge(hang_timeout=2)
    assert judge.judge(Sample(0, MOUNT, answered=True)) is Health.ALIVE
    assert silent_until(judge, 1, 2, stopped=True) == [Health.SILENT] * 2
    assert judge.judge(Sample(3, MOUNT, answered=True)) is Health.ALIVE
    assert judge.silent_for(3) == 0
    # The silence starts over after an answer: 2 s more are needed again.
    assert silent_until(judge, 4, 5, stopped=True) == [Health.SILENT] * 2
    assert judge.judge(Sample(6, MOUNT, stopped=True)) is Health.HUNG


def test_proof_of_death_is_dead_at_once() -> None:
    judge = HealthJudge(hang_timeout=30)
    assert judge.judge(Sample(0, MOUNT, answered=True)) is Health.ALIVE
    assert judge.judge(Sample(1, MOUNT, gone=True)) is Health.DEAD
    # Even on the very first sample (a watcher started after the daemon died).
    assert HealthJudge(hang_timeout=30).judge(Sample(0, MOUNT, gone=True)) is Health.DEAD


def test_no_mount_is_no_failure() -> None:
    judge = HealthJudge(hang_timeout=1)
    assert judge.judge(Sample(0, None)) is Health.UNMOUNTED
    assert judge.judge(Sample(5, None)) is Health.UNMOUNTED


def test_a_stopped_daemon_is_hung_after_exactly_hang_timeout() -> None:
    judge = HealthJudge(hang_timeout=2)
    judge.judge(Sample(0, MOUNT, answered=True))
    assert first_hung(judge, 1, stopped=True) == 3  # silent since 1: 1 + 2
    assert judge.silent_for(3) == 2


def test_a_running_daemon_gets_its_own_watchdog_first() -> None:
    """A silent daemon that still runs gets its own watchdog's bound (two sampling intervals
    and the log's grace after hang_timeout) before the watcher fails it closed."""
    for timeout in (0.5, 2, 30):
        judge = HealthJudge(hang_timeout=timeout)
        hung = first_hung(judge, 0)
        limit = timeout + running_grace(timeout)
        assert limit - POLL_INTERVAL < hung <= limit + POLL_INTERVAL
        assert running_grace(timeout) > 2 * min(timeout / 10, 1)


def test_hang_timeout_zero_means_never() -> None:
    judge = HealthJudge(hang_timeout=0)
    assert set(silent_until(judge, 0, 3600, stopped=True)) == {Health.SILENT}


def test_the_watchers_own_pause_is_not_counted_against_the_daemon() -> None:
    """A watcher that was not scheduled (suspended, starved) starts counting afresh."""
    judge = HealthJudge(hang_timeout=3)
    judge.judge(Sample(0, MOUNT, stopped=True))
    late = LATE_GAP + 10
    assert judge.judge(Sample(late, MOUNT, stopped=True)) is Health.SILENT
    assert judge.silent_for(late) == 0
    assert first_hung(judge, late + 1, stopped=True) == late + 3


def test_a_new_mount_starts_afresh() -> None:
    judge = HealthJudge(hang_timeout=2)
    assert silent_until(judge, 0, 1, stopped=True) == [Health.SILENT] * 2
    assert judge.judge(Sample(2, MOUNT + 1, stopped=True)) is Health.SILENT
    assert judge.judge(Sample(3, MOUNT + 1, stopped=True)) is Health.SILENT
    assert judge.judge(Sample(4, MOUNT + 1, stopped=True)) is Health.HUNG
    # Unmounted in between: the next mount's silence starts with it.
    judge.judge(Sample(5, None))
    assert judge.judge(Sample(6, MOUNT + 2, stopped=True)) is Health.SILENT


def test_a_timeout_learned_later_applies_to_the_silence_so_far() -> None:
    judge = HealthJudge(hang_timeout=30)
    assert silent_until(judge, 0, 2, stopped=True) == [Health.SILENT] * 3
    judge.hang_timeout = 2
    assert judge.judge(Sample(3, MOUNT, stopped=True)) is Health.HUNG


def test_three_failures_in_ten_minutes_are_recovered_not_a_fourth() -> None:
    budget = FailureBudget([])
    for at in (0.0, 100.0, 200.0):
        assert budget.allows(at)
        budget.record(at)
    assert RECOVERIES == 3 and WINDOW == 600
    assert not budget.allows(300.0)
    assert len(budget.recent(300.0)) == 3
    # Once the first leaves the window, one more may be recovered.
    assert not budget.allows(599.0)
    assert budget.allows(600.0)
    budget.record(600.0)
    assert budget.failures == [100.0, 200.0, 600.0]  # forgotten once out of the window
    assert not budget.allows(650.0)


@pytest.mark.parametrize(
    ("earlier", "allowed"), [([], True), ([1.0, 2.0], True), ([1.0] * 3, False)]
)
def test_the_budget_reads_earlier_failures(earlier: list[float], allowed: bool) -> None:
    assert FailureBudget(earlier).allows(10.0) is allowed
    assert FailureBudget(earlier).allows(10.0 + WINDOW)  # all of them too old
