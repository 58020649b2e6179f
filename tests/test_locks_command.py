"""`lockfs locks` as an administrator uses it on a real mount: filtering by a path prefix,
files unlinked while held, and the order of the rows."""

from __future__ import annotations

import json
import os
from typing import Any

from support import Mount, release, run_lockfs


def locks_json(mnt: Mount, *extra: str) -> list[dict[str, Any]]:
    result = run_lockfs("locks", mnt, *extra, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_held_file_unlinked_keeps_its_directory_and_its_prefix(mnt: Mount) -> None:
    """An unlinked file is shown by the path it had (PBS removes a snapshot's lock file while
    it may still be held): `lockfs locks MNT store1` must not hide it."""
    (mnt / "store1").mkdir()
    (mnt / "store2").mkdir()
    unlinked, ino = mnt.hold("plain", mnt / "store1/vm-100")
    os.unlink(mnt / "store1/vm-100")
    replaced, replaced_ino = mnt.hold("plain", mnt / "store1/vm-101")
    (mnt / "store2/new").touch()
    os.rename(mnt / "store2/new", mnt / "store1/vm-101")  # replaces the held file's name
    other, _ = mnt.hold("plain", mnt / "store2/vm-200")
    (mnt / "store1").rename(mnt / "moved")  # where the name was when it went is what counts

    rows = locks_json(mnt, "store1")
    assert [(r["path"], r["unlinked"], r["ino"]) for r in rows] == [
        ("store1/vm-100", True, ino),
        ("store1/vm-101", True, replaced_ino),
    ]
    table = run_lockfs("locks", mnt, "store1")
    assert table.returncode == 0, table.stderr
    assert [line.split()[:2] for line in table.stdout.splitlines()[1:]] == [
        ["store1/vm-100", "(unlinked)"],
        ["store1/vm-101", "(unlinked)"],
    ]
    assert [r["path"] for r in locks_json(mnt, "store2")] == ["store2/vm-200"]
    for holder in (unlinked, replaced, other):
        release(holder)


def test_rows_are_sorted_by_path(mnt: Mount) -> None:
    """Whatever order the kernel lists the locks in, the rows come by path."""
    names = ["c/3", "a/1", "b/2", "a/0", "c/1"]
    holders = []
    for name in names:
        (mnt / name).parent.mkdir(exist_ok=True)
        holders.append(mnt.hold("plain", mnt / name)[0])
    assert [r["path"] for r in locks_json(mnt)] == sorted(names)
    table = run_lockfs("locks", mnt).stdout.splitlines()[1:]
    assert [line.split()[0] for line in table] == sorted(names)
    for holder in holders:
        release(holder)
