"""Plain lock directories as PBS leaves them on its tmpfs, for the switch-over tests."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

#: Debian's fixed uid and gid of the `backup` user, which PBS runs as.
BACKUP_ID = 34
#: What PBS's move-journal holds in these tests.
JOURNAL = b"move 0123abcd store1 -> store2\nmove 4567ef01 store1 -> store2\n"


def plain_lock_dir(parent: Path) -> Path:
    """``parent/locks`` as PBS leaves it: owned by backup, a move-journal holding lines, stale
    (empty) lock files of chunks, groups and snapshots, and an empty directory."""
    locks = parent / "locks"
    (locks / "store1" / ".chunks" / "0123").mkdir(parents=True)
    (locks / "store1" / "vm" / "100").mkdir(parents=True)
    (locks / "empty-dir").mkdir()
    (locks / "store1" / "move-journal").write_bytes(JOURNAL)
    for stale in ("store1/.chunks/0123/0123abcd", "store1/vm/100.lck", "store1/vm/100/snap"):
        (locks / stale).touch()
    for path in [locks, *locks.rglob("*")]:
        os.chown(path, BACKUP_ID, BACKUP_ID)
    (locks / "store1" / "move-journal").chmod(0o640)
    (locks / "store1").chmod(0o750)
    return locks


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry's inode, type, owner, mode, size and content (a symlink's target): what
    "unchanged" means."""
    entries = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            content: bytes | str | None = path.read_bytes()
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        else:
            content = None
        key = str(path.relative_to(root))
        entries[key] = (st.st_ino, st.st_mode, st.st_uid, st.st_gid, st.st_size, content)
    return entries
