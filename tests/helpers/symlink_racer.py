#!/usr/bin/env python3
"""The owner of a directory that root writes into, racing root with symlinks.

``symlink_racer.py DIR TARGET ACTS SECONDS`` watches DIR with inotify (as the directory's owner,
not root) and answers every event at once:

* a name created or moved in (root's temporary file, the file it renamed into place) is
  replaced by a symlink to TARGET;
* a name moved away (a temporary name root just renamed) is planted again as a symlink to
  TARGET, so that a temporary name root reuses points at TARGET the next time.

It stops once it has replaced ACTS names, or after SECONDS, and prints one JSON line: how many
names it saw, replaced and planted. Root must never write TARGET.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import struct
import sys
import time

IN_CREATE = 0x100
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then the name, NUL-padded
#: The racer's own temporary names (a symlink is made there, then renamed over root's name).
OWN = ".racer"


def events(fd: int, deadline: float) -> list[tuple[int, str]]:
    """The (mask, name) events that arrive before ``deadline``; [] if none did."""
    ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
    if not ready:
        return []
    data, out, offset = os.read(fd, 1 << 16), [], 0
    while offset < len(data):
        _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
        offset += _EVENT.size
        name = data[offset : offset + length].rstrip(b"\0")
        offset += length
        out.append((mask, os.fsdecode(name)))
    return out


def main() -> int:
    directory, target = sys.argv[1], sys.argv[2]
    acts, seconds = int(sys.argv[3]), float(sys.argv[4])
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    mask = IN_CREATE | IN_MOVED_FROM | IN_MOVED_TO
    if fd < 0 or libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
        raise OSError(ctypes.get_errno(), "inotify")
    print("watching", flush=True)
    deadline = time.monotonic() + seconds
    seen: set[str] = set()
    counts = {"seen": 0, "replaced": 0, "planted": 0}
    serial = 0
    while counts["replaced"] < acts and time.monotonic() < deadline:
        for event, name in events(fd, deadline):
            path = os.path.join(directory, name)
            if name.startswith(OWN) or os.path.islink(path):
                continue  # the racer's own doing
            seen.add(name)
            try:
                if event & IN_MOVED_FROM:
                    os.symlink(target, path)
                    counts["planted"] += 1
                else:
                    serial += 1
                    link = os.path.join(directory, f"{OWN}{serial}")
                    os.symlink(target, link)
                    os.rename(link, path)  # root's file is now a symlink to TARGET
                    counts["replaced"] += 1
            except OSError:
                pass  # root was quicker this time
    counts["seen"] = len(seen)
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
