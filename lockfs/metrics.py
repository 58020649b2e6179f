"""Counters in Prometheus text format (`lockfs metrics`, node-exporter textfile collector)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from .locks import KernelLock

# name, type, help, status key
_SCALARS = (
    ("lockfs_nodes", "gauge", "Live entries in the node table, by kind.", None),
    ("lockfs_open_files", "gauge", "Nodes with at least one open handle.", "open"),
    ("lockfs_kernel_referenced", "gauge", "Nodes the kernel holds a reference on.", "referenced"),
    ("lockfs_reclaim_backlog", "gauge", "Idle nodes waiting for their delay.", "reclaim_backlog"),
    ("lockfs_entries_created_total", "counter", "Nodes created since mount.", "created"),
    ("lockfs_entries_reclaimed_total", "counter", "Idle nodes reclaimed.", "reclaimed"),
    (
        "lockfs_invalidations_total",
        "counter",
        "Entries the daemon asked the kernel to drop.",
        "invalidations",
    ),
    ("lockfs_faults_total", "counter", "Handler exceptions answered with EIO.", "faults"),
    ("lockfs_resident_memory_bytes", "gauge", "Daemon resident memory.", "rss_bytes"),
    ("lockfs_uptime_seconds", "gauge", "Seconds since the daemon started.", "uptime_s"),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(status: dict[str, Any], locks: list[KernelLock] | None = None) -> str:
    """Render a ``status()`` dict (and optionally the mount's kernel locks) as metrics."""
    mp = f'mountpoint="{_escape(status["mountpoint"])}"'
    out: list[str] = []
    for name, kind, help_text, key in _SCALARS:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        if key is None:
            out.append(f'{name}{{{mp},kind="file"}} {status["files"]}')
            out.append(f'{name}{{{mp},kind="dir"}} {status["dirs"]}')
        else:
            out.append(f"{name}{{{mp}}} {status[key]}")
    out.append("# HELP lockfs_requests_total FUSE requests served, by type.")
    out.append("# TYPE lockfs_requests_total counter")
    for op, count in sorted(status["requests"].items()):
        out.append(f'lockfs_requests_total{{{mp},op="{op}"}} {count}')
    if locks is not None:
        out.append("# HELP lockfs_locks Kernel locks on the mount, held or awaited.")
        out.append("# TYPE lockfs_locks gauge")
        counts = Counter(
            (lock.kind, "exclusive" if lock.exclusive else "shared", lock.waiting) for lock in locks
        )
        for kind in ("flock", "posix", "ofd"):
            for mode in ("shared", "exclusive"):
                for waiting in (False, True):
                    state = "waiting" if waiting else "held"
                    value = counts[(kind, mode, waiting)]
                    labels = f'{mp},kind="{kind}",mode="{mode}",state="{state}"'
                    out.append(f"lockfs_locks{{{labels}}} {value}")
    return "\n".join(out) + "\n"


def write_atomically(path: str, text: str) -> None:
    """Replace ``path`` so a collector never reads a half-written file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as out:
        out.write(text)
    os.replace(tmp, path)
