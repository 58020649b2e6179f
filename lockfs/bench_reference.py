"""Reference servers of ``lockfs-bench``: what the hot and cold cycles cost below lockfs.

The bench runs the hot and cold workloads on tmpfs, on these servers and on lockfs, in the same
run with the same workers, and reports lockfs / server beside lockfs / tmpfs:

* **minimal**: :mod:`lockfs.bench_minimal`, a pyfuse3 + trio server with lockfs's mount
  options and cache timeouts and nothing else: the limit of the framework lockfs runs on.

This module holds what the bench needs to know about them: how to start one, which keys of a
run are compared, and the table of its requests by type. The servers are started and measured
by :mod:`lockfs.bench` like its own lockfs daemon.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from .bench_minimal import SUBTYPE
from .mounts import mounts_at

MINIMAL = "minimal"
#: Every reference the bench knows, in the order its columns are printed.
REFERENCES = (MINIMAL,)
#: Keys compared as lockfs / reference: the run's times and CPU, and the daemon's figures
#: (lockfs's including its reclaim, which the reference servers do not do).
RATIO_KEYS = (
    "us_per_cycle",
    "latency_us",
    "cycles_per_s",
    "total_cpu_us_per_cycle",
    "daemon_cpu_us_per_cycle",
    "requests_total_per_cycle",
    "daemon_cpu_us_per_request",
)
DAEMON_KEYS = {"daemon_cpu_us_per_cycle", "requests_total_per_cycle", "daemon_cpu_us_per_request"}


def minimal_command(mountpoint: str, dir_grace: float) -> list[str]:
    """The command line of a minimal server with lockfs's directory entry timeout."""
    return [
        sys.executable,
        "-m",
        "lockfs.bench_minimal",
        mountpoint,
        "--dir-entry-timeout",
        str(dir_grace / 2),
    ]


def is_minimal_mounted(path: str) -> bool:
    types = mounts_at(path)
    return bool(types) and types[-1] == f"fuse.{SUBTYPE}"


def daemon_view(figures: dict[str, Any]) -> dict[str, Any]:
    """A run's figures with the daemon's taken from ``with_reclaim`` where there is one."""
    return {**figures, **figures.get("with_reclaim", {})}


def reference_ratios(run: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """``{"ratio_<reference>": {key: lockfs / reference}}`` for every reference in ``run``."""
    lockfs = daemon_view(run["lockfs"])
    out = {}
    for name in REFERENCES:
        if name not in run:
            continue
        reference = daemon_view(run[name])
        ratios: dict[str, float | None] = {}
        for key in RATIO_KEYS:
            a, b = reference.get(key), lockfs.get(key)
            if isinstance(a, int | float) and isinstance(b, int | float) and a:
                ratios[key] = b / a
            else:
                ratios[key] = None
        out[f"ratio_{name}"] = ratios
    return out


def request_columns(results: dict[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
    """(label, figures) of every hot and cold run of reference ``name``."""
    cols = []
    for section in ("hot", "cold"):
        for run in results.get(section, {}).get("runs", []):
            if name in run:
                cols.append((f"{section} {run['procs']}p", run[name]))
    return cols


def columns_of(run: dict[str, Any]) -> Sequence[str]:
    """The reference servers measured in ``run``."""
    return [name for name in REFERENCES if name in run]
