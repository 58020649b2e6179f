#!/usr/bin/env python3
"""A stand-in for Proxmox Backup Server's two services in the system-test containers.

``pbs_standin.py api|proxy [LOCK_DIR]`` is what the stand-in ``proxmox-backup.service`` (root)
and ``proxmox-backup-proxy.service`` (user ``backup``) run (tests/helpers/pbs-standin/), so
that lockfs's drop-ins and ``RequiredBy=`` apply to units with PBS's names. Like PBS, it takes
every lock with PBS's own sequence (lockfs.pbs_lock, as in ../shared/pbs-lock-protocol.md):

* at start: shared locks on the namespace ``a:b:c`` and its ancestors (``.ns-lock``) and an
  exclusive lock on the backup group ``vm-100`` in it, held until it stops: the proxy in
  datastore ``store1``, the API in ``store2`` (directories belong to whoever creates them,
  and the API runs as root); the proxy appends a line to ``store1/move-journal`` under that
  file's own lock (a data file: lines stay);
* then it tells systemd it is ready (``Type=notify``) and, until SIGTERM, takes and releases
  a fresh chunk lock and a snapshot lock every 0.1 s.

It logs to stdout (the journal): at start ``ROLE: started pid N as USER on FSTYPE`` (the file
system the lock directory was on when its locks were taken: ``fuse.lockfs`` proves the mount
came first), then ``ROLE: N cycles`` every 50 cycles. Any error is logged as ``ROLE: error:
...`` and ends it with exit status 1, so systemd shows the service failed.
"""

from __future__ import annotations

import os
import pwd
import random
import signal
import socket
import sys
import time

if not __package__:
    # The checkout's lockfs.pbs_lock, whatever lockfs the container has installed (or none).
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from lockfs.pbs_lock import chunk_path, lock_helper, open_file_locked

LOCK_DIR = "/run/proxmox-backup/locks"
#: Debian's fixed uid and gid of ``backup``: PBS gives every lock file to it.
BACKUP = (34, 34)
NAMESPACE = ("a", "a:b", "a:b:c")
STORES = {"proxy": "store1", "api": "store2"}
GROUP = "vm-100"
SNAPSHOT = "vm-100-2025\\x2d01\\x2d02T03\\x3a04\\x3a05Z"
CYCLE = 0.1


def notify(state: str) -> None:
    """sd_notify(3): tell systemd ``state`` (nothing outside a ``Type=notify`` service)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


def fstype_of(path: str) -> str:
    """The type of the file system ``path`` is on (the longest mountpoint above it)."""
    best, fstype = "", "?"
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            after = fields[fields.index("-") + 1]
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, fstype = point, after
    return fstype


def hold_locks(role: str, store: str) -> list[int]:
    """The locks a running PBS service holds: the namespace chain shared, its group exclusive."""
    held = [lock_helper(f"{store}/{ns}/.ns-lock", BACKUP, exclusive=False) for ns in NAMESPACE]
    held.append(lock_helper(f"{store}/{NAMESPACE[-1]}/{GROUP}", BACKUP))
    return held


def append_journal(role: str, store: str) -> None:
    """Append a line to ``move-journal`` under its own lock, as PBS does (timeout 10 s)."""
    fd = open_file_locked(f"{store}/move-journal", BACKUP, timeout=10)
    try:
        os.write(fd, f"{role} started pid {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def cycle(store: str) -> None:
    """One chunk lock (a fresh digest) and one snapshot lock, taken and released with PBS's
    sequence."""
    os.close(lock_helper(chunk_path(store, random.randrange(1 << 30)), BACKUP))
    os.close(lock_helper(f"{store}/{NAMESPACE[-1]}/{SNAPSHOT}", BACKUP))


def serve(role: str, lock_dir: str) -> int:
    store = f"{lock_dir}/{STORES[role]}"
    if not os.path.isdir(lock_dir):  # a plain lock directory: PBS creates it for backup
        os.mkdir(lock_dir)
        os.chown(lock_dir, *BACKUP)
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    held = hold_locks(role, store)
    if role == "proxy":
        append_journal(role, store)
    user = pwd.getpwuid(os.getuid()).pw_name
    print(f"{role}: started pid {os.getpid()} as {user} on {fstype_of(lock_dir)}", flush=True)
    notify("READY=1")
    count = 0
    while not stopping:
        cycle(store)
        count += 1
        if count % 50 == 0:
            print(f"{role}: {count} cycles", flush=True)
        time.sleep(CYCLE)
    for fd in held:
        os.close(fd)
    print(f"{role}: stopped after {count} cycles", flush=True)
    return 0


def main() -> int:
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in STORES:
        print("usage: pbs_standin.py api|proxy [LOCK_DIR]", file=sys.stderr)
        return 2
    role = sys.argv[1]
    try:
        return serve(role, sys.argv[2] if len(sys.argv) == 3 else LOCK_DIR)
    except Exception as exc:
        print(f"{role}: error: {type(exc).__name__}: {exc}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
