"""The bench's rounds: every target runs every round, in alternating order, and the rounds of
one target add up to the figures of one run."""

from __future__ import annotations

import pytest

from lockfs.bench.rounds import combine, turns


def test_turns_alternate_and_cover_every_round() -> None:
    order = turns(["tmpfs", "minimal", "lockfs"], 3)
    assert order == [
        (0, "tmpfs"), (0, "minimal"), (0, "lockfs"),
        (1, "lockfs"), (1, "minimal"), (1, "tmpfs"),
        (2, "tmpfs"), (2, "minimal"), (2, "lockfs"),
    ]  # fmt: skip


def part(cycles: int, wall: float, cpu: float, requests: dict[str, int]) -> dict[str, object]:
    return {
        "procs": 2,
        "cycles": cycles,
        "wall_s": wall,
        "latency_us": wall / cycles * 2e6,
        "client_cpu_us_per_cycle": 10.0,
        "daemon_cpu_s": cpu,
        "requests": requests,
        "created_per_cycle": 1.0,
        "reclaimed_per_cycle": 0.5,
        "table_after_run": {"nodes": cycles},
    }


def test_combine_adds_up_the_rounds() -> None:
    run = combine([part(100, 0.01, 0.02, {"open": 100}), part(300, 0.05, 0.04, {"open": 300})])
    assert run["cycles"] == 400 and run["rounds"] == 2
    assert run["us_per_cycle"] == pytest.approx(0.06 / 400 * 1e6)
    assert run["cycles_per_s"] == pytest.approx(400 / 0.06)
    assert run["daemon_cpu_us_per_cycle"] == pytest.approx(0.06 / 400 * 1e6)
    assert run["requests_per_cycle"] == {"open": 1.0}
    assert run["daemon_cpu_us_per_request"] == pytest.approx(0.06 / 400 * 1e6)
    assert run["total_cpu_us_per_cycle"] == pytest.approx(10.0 + 150.0)
    assert run["table_after_run"] == {"nodes": 300}


def test_combine_without_a_daemon() -> None:
    tmpfs = {k: v for k, v in part(100, 0.001, 0, {}).items() if k in ("procs", "cycles", "wall_s")}
    tmpfs.update(latency_us=10.0, client_cpu_us_per_cycle=3.0)
    run = combine([tmpfs, tmpfs])
    assert run["cycles"] == 200 and run["total_cpu_us_per_cycle"] == 3.0
    assert "daemon_cpu_us_per_cycle" not in run
