"""Measuring in rounds for ``lockfs-bench``: the targets of a run take turns.

On a shared machine the load changes while the bench runs (other jobs, other guests of the
same host taking the CPUs' other hyperthreads): measured one after the other, tmpfs, the
reference server and lockfs would each see a different machine, and the ratios between them
would drift by tens of percent from run to run. So each target's run is cut into rounds, and
the targets take turns, in alternating order (tmpfs, minimal, lockfs, then lockfs, minimal,
tmpfs, ...), so that each sees the same mix of quiet and busy moments. :func:`combine` adds up
the rounds of one target into the figures of one run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def turns(targets: Sequence[T], rounds: int) -> list[tuple[int, T]]:
    """``(round, target)`` in the order they run: every round all targets, in alternating
    order, so that none is always first or last."""
    order = []
    for part in range(rounds):
        for target in targets if part % 2 == 0 else list(reversed(targets)):
            order.append((part, target))
    return order


def combine(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one target's run from the figures of its rounds (as ``timed_run``
    returns them): wall times, cycles, CPU and requests added up, per-cycle figures computed
    anew, the table state of the last round."""
    cycles = sum(part["cycles"] for part in parts)
    wall = sum(part["wall_s"] for part in parts)
    client_cpu = sum(part["client_cpu_us_per_cycle"] * part["cycles"] for part in parts)
    out: dict[str, Any] = {
        "procs": parts[0]["procs"],
        "rounds": len(parts),
        "cycles": cycles,
        "wall_s": wall,
        "cycles_per_s": cycles / wall if wall > 0 else None,
        "us_per_cycle": wall / cycles * 1e6,
        "latency_us": sum(part["latency_us"] * part["cycles"] for part in parts) / cycles,
        "client_cpu_us_per_cycle": client_cpu / cycles,
    }
    if "daemon_cpu_s" not in parts[0]:
        out["total_cpu_us_per_cycle"] = out["client_cpu_us_per_cycle"]
        return out
    requests: Counter[str] = Counter()
    for part in parts:
        requests.update(part["requests"])
    total = sum(requests.values())
    cpu = sum(part["daemon_cpu_s"] for part in parts)
    out.update(
        {
            "requests": dict(sorted(requests.items())),
            "requests_per_cycle": {name: n / cycles for name, n in sorted(requests.items())},
            "requests_total_per_cycle": total / cycles,
            "daemon_cpu_s": cpu,
            "daemon_cpu_us_per_cycle": cpu / cycles * 1e6,
            "daemon_cpu_us_per_request": cpu / total * 1e6 if total else None,
            "created_per_cycle": sum(p["created_per_cycle"] * p["cycles"] for p in parts) / cycles,
            "reclaimed_per_cycle": sum(p["reclaimed_per_cycle"] * p["cycles"] for p in parts)
            / cycles,
            "table_after_run": parts[-1]["table_after_run"],
        }
    )
    out["total_cpu_us_per_cycle"] = out["client_cpu_us_per_cycle"] + out["daemon_cpu_us_per_cycle"]
    return out
