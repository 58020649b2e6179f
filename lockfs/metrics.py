"""Counters in Prometheus text format (`lockfs metrics`, node-exporter textfile collector).

Which status field becomes which metric is declared on the field (lockfs.status); this module
only renders, and keeps the metrics file current (written as lockfs.rootfiles writes files as
root: never through a symlink).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Mapping

import trio

from . import rootfiles
from .linux import KernelLock, read_proc_locks
from .status import Metric, MountStatus, metric_of

log = logging.getLogger(__name__)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())


def prometheus_text(status: MountStatus, locks: list[KernelLock] | None = None) -> str:
    """Render a status (and optionally the mount's kernel locks) as metrics."""
    mountpoint = {"mountpoint": status.mountpoint}
    samples: dict[str, tuple[Metric, list[str]]] = {}
    for status_field in dataclasses.fields(status):
        metric = metric_of(status_field)
        if metric is None:
            continue
        lines = samples.setdefault(metric.name, (metric, []))[1]
        value = getattr(status, status_field.name)
        if metric.key_label is not None:
            for key, count in sorted(value.items()):
                labels = _labels({**mountpoint, **metric.labels, metric.key_label: key})
                lines.append(f"{metric.name}{{{labels}}} {count}")
        else:
            lines.append(f"{metric.name}{{{_labels({**mountpoint, **metric.labels})}}} {value}")
    out: list[str] = []
    for metric, lines in samples.values():
        out.append(f"# HELP {metric.name} {metric.help}")
        out.append(f"# TYPE {metric.name} {metric.kind}")
        out.extend(lines)
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
                    labels = _labels({**mountpoint, "kind": kind, "mode": mode, "state": state})
                    out.append(f"lockfs_locks{{{labels}}} {value}")
    return "\n".join(out) + "\n"


#: The metrics file's mode: node-exporter (another user) reads it.
METRICS_FILE_MODE = 0o644


async def keep_metrics_file(
    path: str, interval: float, status: Callable[[], MountStatus], device: Callable[[], int]
) -> None:
    """Rewrite the metrics file every ``interval`` seconds (and at once), until cancelled.

    The file is replaced atomically through its directory's descriptor, never through a
    symlink (lockfs.rootfiles.replace_file): the directory usually belongs to node-exporter's
    user, who must not be able to redirect root's write. ``device`` gives the mount's device
    number, for its locks in /proc/locks. A failure is logged once (again only when its reason
    changes), tried again at every interval, and its end is logged too.
    """
    failure: str | None = None
    while True:
        try:
            text = prometheus_text(status(), read_proc_locks(device()))
            rootfiles.replace_file(path, text.encode(), METRICS_FILE_MODE)
        except OSError as exc:
            if str(exc) != failure:
                log.error("cannot write metrics to %s: %s", path, exc)
                failure = str(exc)
        else:
            if failure is not None:
                log.info("metrics written again to %s", path)
                failure = None
        await trio.sleep(interval)
