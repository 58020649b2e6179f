"""Administrator commands that read a running mount: ``status``, ``locks`` and ``metrics``.

They talk to the daemon over its root-only, read-only control socket and read the kernel's
/proc/locks; none of them changes anything or touches the lock namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .control import ControlError, query
from .humanize import format_duration
from .locks import format_table as format_lock_table
from .locks import lock_rows, ofd_holders, read_proc_locks
from .metrics import prometheus_text


def fail(message: str) -> int:
    """Print ``lockfs: message`` on stderr; the exit status of a failed command."""
    print(f"lockfs: {message}", file=sys.stderr)
    return 1


def format_status(status: dict[str, Any]) -> str:
    """``lockfs status`` as a human reads it."""
    requests = status["requests"]
    total = sum(requests.values())
    by_type = ", ".join(f"{op} {n}" for op, n in sorted(requests.items(), key=lambda i: -i[1]))
    shown = {k: v for k, v in status["options"].items() if v not in (None, [], False)}
    options = ", ".join(f"{k}={v}" for k, v in shown.items())
    lines = [
        f"mountpoint       {status['mountpoint']} (daemon pid {status['pid']})",
        f"uptime           {format_duration(status['uptime_s'])}",
        f"live entries     {status['files']} files, {status['dirs']} directories "
        f"({status['open']} open, {status['referenced']} referenced by the kernel)",
        f"since mount      {status['created']} created, {status['reclaimed']} reclaimed, "
        f"{status['invalidations']} entries dropped from the kernel's cache",
        f"reclaim backlog  {status['reclaim_backlog']} idle entries waiting for their delay",
        f"requests         {total} ({by_type or 'none'})",
        f"faults           {status['faults']} (handler errors answered with EIO)",
        f"memory           {status['rss_bytes'] / 2**20:.1f} MiB resident",
        f"options          {options}",
    ]
    return "\n".join(lines)


def status_main(argv: Sequence[str]) -> int:
    """``lockfs status MOUNTPOINT [--json]``: the daemon's counters."""
    parser = argparse.ArgumentParser(prog="lockfs status", description=status_main.__doc__)
    parser.add_argument("mountpoint")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        status = query(args.mountpoint, "status")
    except ControlError as exc:
        return fail(str(exc))
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else format_status(status))
    return 0


def locks_main(argv: Sequence[str]) -> int:
    """``lockfs locks MOUNTPOINT [PATH-PREFIX] [--json]``: every held or awaited lock."""
    parser = argparse.ArgumentParser(prog="lockfs locks", description=locks_main.__doc__)
    parser.add_argument("mountpoint")
    parser.add_argument("prefix", nargs="?", default="", help="only paths starting with this")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        dev = os.stat(args.mountpoint).st_dev
        locks = read_proc_locks(dev)
        inos = sorted({lock.ino for lock in locks})
        nodes = {
            int(ino): info
            for ino, info in query(args.mountpoint, f"nodes {' '.join(map(str, inos))}").items()
        }
    except (ControlError, OSError) as exc:
        return fail(str(exc))
    ofd = [lock.ino for lock in locks if lock.kind == "ofd" and lock.pid is None]
    rows = lock_rows(locks, nodes, ofd_holders(dev, ofd) if ofd else None)
    prefix = args.prefix.strip("/")
    rows = [row for row in rows if row.path.startswith(prefix)]
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
    elif rows:
        print(format_lock_table(rows))
    else:
        print("no locks held or awaited" + (f" under {prefix}" if prefix else ""))
    return 0


def metrics_main(argv: Sequence[str]) -> int:
    """``lockfs metrics MOUNTPOINT``: counters and locks in Prometheus text format."""
    parser = argparse.ArgumentParser(prog="lockfs metrics", description=metrics_main.__doc__)
    parser.add_argument("mountpoint")
    args = parser.parse_args(argv)
    try:
        status = query(args.mountpoint, "status")
        locks = read_proc_locks(os.stat(args.mountpoint).st_dev)
    except (ControlError, OSError) as exc:
        return fail(str(exc))
    sys.stdout.write(prometheus_text(status, locks))
    return 0


SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "status": status_main,
    "locks": locks_main,
    "metrics": metrics_main,
}
