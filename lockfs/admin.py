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

from .control import ControlError, query, query_status
from .locks import format_table as format_lock_table
from .locks import lock_rows, ofd_holders, read_proc_locks
from .metrics import prometheus_text
from .status import format_text


def fail(message: str) -> int:
    """Print ``lockfs: message`` on stderr; the exit status of a failed command."""
    print(f"lockfs: {message}", file=sys.stderr)
    return 1


def status_main(argv: Sequence[str]) -> int:
    """``lockfs status MOUNTPOINT [--json]``: the daemon's counters."""
    parser = argparse.ArgumentParser(prog="lockfs status", description=status_main.__doc__)
    parser.add_argument("mountpoint")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        status = query_status(args.mountpoint)
    except ControlError as exc:
        return fail(str(exc))
    if args.json:
        print(json.dumps(status.to_json(), indent=2, sort_keys=True))
    else:
        print(format_text(status))
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
        status = query_status(args.mountpoint)
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
