"""Unit tests of the data mirror (lockfs.persist) on a real directory, with no FUSE: what it
keeps, that every change is all or nothing, restore, and the safety of its directories.

The invariant checked throughout: the mirror holds exactly the table's linked regular files
that hold data, with their bytes, owner, mode and mtime, in directories with their owner and
mode (:func:`assert_mirrors`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from support import FakeClock, FakeWallClock

from lockfs.mirror_dir import discard, mirror_name, mirror_path
from lockfs.nodes import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    FsError,
    Limits,
    Node,
    NodeTable,
    ReclaimPolicy,
)
from lockfs.persist import DataMirror, MirrorDiverged
from lockfs.restore import MirrorError

MOUNTPOINT = "/run/proxmox-backup/locks"
BACKUP = 34
FILE_DELAY = 0.5
DIR_GRACE = 10.0

#: path → (kind, bytes or None, uid, gid, mode, mtime_ns or None)
Tree = dict[str, tuple[str, bytes | None, int, int, int, int | None]]


def new_table(clock: FakeClock | None = None, **limits: int) -> NodeTable:
    return NodeTable(
        policy=ReclaimPolicy(FILE_DELAY, DIR_GRACE),
        limits=Limits(**limits),
        clock=clock or FakeClock(start=100.0),
        wall_clock_ns=FakeWallClock(),
    )


def start(table: NodeTable, data_dir: str | Path) -> DataMirror:
    mirror = DataMirror(table, str(data_dir), MOUNTPOINT, lock_wait=0.1)
    mirror.open()
    mirror.restore()
    return mirror


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def table() -> NodeTable:
    return new_table()


@pytest.fixture
def mirror(table: NodeTable, data_dir: Path) -> Iterator[DataMirror]:
    mirror = start(table, data_dir)
    yield mirror
    mirror.close()


def table_tree(table: NodeTable) -> Tree:
    """What the mirror must hold: the data files and the directories on their way."""
    tree: Tree = {}

    def walk(directory: Node, prefix: str) -> bool:
        assert directory.children is not None
        holds = False
        for name, node in directory.children.items():
            path = prefix + os.fsdecode(name)
            mode = stat.S_IMODE(node.mode)
            if node.children is not None:
                if walk(node, path + "/"):
                    tree[path] = ("dir", None, node.uid, node.gid, mode, None)
                    holds = True
            elif node.size:
                data = table.read(node.ino, 0, node.size)
                tree[path] = ("file", data, node.uid, node.gid, mode, node.mtime_ns)
                holds = True
        return holds

    walk(table.root, "")
    return tree


def mirror_tree(root: str) -> Tree:
    tree: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            rel = os.path.relpath(path, root)
            mode = stat.S_IMODE(st_.st_mode)
            if stat.S_ISDIR(st_.st_mode):
                tree[rel] = ("dir", None, st_.st_uid, st_.st_gid, mode, None)
            else:
                data = Path(path).read_bytes()
                tree[rel] = ("file", data, st_.st_uid, st_.st_gid, mode, st_.st_mtime_ns)
    return tree


def assert_mirrors(table: NodeTable, mirror: DataMirror) -> None:
    assert mirror_tree(mirror.path) == table_tree(table)


def fails(code: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    with pytest.raises(FsError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == code, errno.errorcode.get(info.value.errno)


def make_dirs(table: NodeTable, *names: bytes, mode: int = 0o755) -> Node:
    parent = table.root
    for name in names:
        parent = table.mkdir(parent.ino, name, mode, BACKUP, BACKUP)
    return parent


def data_file(table: NodeTable, parent: Node, name: bytes, data: bytes, mode: int = 0o640) -> Node:
    node = table.create(parent.ino, name, mode, BACKUP, BACKUP)
    table.write(node.ino, 0, data)
    table.release(node.ino)
    return node


def test_the_mount_directory_is_named_after_the_mountpoint(data_dir: Path) -> None:
    assert mirror_name(MOUNTPOINT) == "run-proxmox\\x2dbackup-locks"
    assert mirror_path(str(data_dir), MOUNTPOINT) == f"{data_dir}/run-proxmox\\x2dbackup-locks"
    long = "/" + "x" * 300
    assert len(mirror_name(long)) <= 255 and mirror_name(long) != mirror_name(long + "y")


def test_appended_lines_are_mirrored_with_owner_mode_and_mtime(
    table: NodeTable, mirror: DataMirror
) -> None:
    store = make_dirs(table, b"store1", mode=0o750)
    journal = data_file(table, store, b"move-journal", b"line 1\n")
    table.write(journal.ino, 7, b"line 2\n")
    table.setattr(journal.ino, mode=0o600, uid=BACKUP, gid=0)
    table.setattr(journal.ino, mtime_ns=123_456_789, atime_ns=5)
    assert_mirrors(table, mirror)
    assert (Path(mirror.path) / "store1/move-journal").read_bytes() == b"line 1\nline 2\n"
    # Lock files hold nothing and leave nothing in the mirror.
    lock = table.create(store.ino, b"vm-100", 0o600, BACKUP, BACKUP)
    table.setattr(lock.ino, mode=0o660)
    assert sorted(os.listdir(Path(mirror.path) / "store1")) == ["move-journal"]


def test_data_that_a_truncate_or_a_write_past_the_end_makes_is_mirrored_sparse(
    table: NodeTable, mirror: DataMirror
) -> None:
    node = table.create(ROOT_INO, b"sparse", 0o644, 0, 0)
    table.setattr(node.ino, size=3 << 20)
    table.write(node.ino, 2 << 20, b"middle")
    assert_mirrors(table, mirror)
    st_ = os.stat(Path(mirror.path) / "sparse")
    assert st_.st_size == 3 << 20 and st_.st_blocks * 512 < 1 << 20  # the holes stay holes
    table.setattr(node.ino, size=(2 << 20) + 3)
    assert_mirrors(table, mirror)


@pytest.mark.parametrize("how", ["setattr", "open O_TRUNC"])
def test_an_emptied_file_leaves_nothing(table: NodeTable, mirror: DataMirror, how: str) -> None:
    store = make_dirs(table, b"store1", b"deeper")
    journal = data_file(table, store, b"move-journal", b"lines\n")
    assert_mirrors(table, mirror)
    if how == "setattr":
        table.setattr(journal.ino, size=0)
    else:
        table.open(journal.ino, os.O_WRONLY | os.O_TRUNC)
    assert os.listdir(mirror.path) == []  # the directories left empty go too
    assert_mirrors(table, mirror)


def test_unlink_removes_the_mirror_and_a_held_unlinked_file_is_not_kept(
    table: NodeTable, mirror: DataMirror
) -> None:
    store = make_dirs(table, b"store1")
    data_file(table, store, b"keep", b"k")
    gone = table.create(store.ino, b"gone", 0o644, 0, 0)
    table.write(gone.ino, 0, b"data")
    table.unlink(store.ino, b"gone")
    table.write(gone.ino, 4, b"more")  # still open: written, but it has no name to keep
    assert_mirrors(table, mirror)
    assert sorted(os.listdir(Path(mirror.path) / "store1")) == ["keep"]


def test_renames_move_the_mirror(table: NodeTable, mirror: DataMirror) -> None:
    one, two = make_dirs(table, b"one"), make_dirs(table, b"two", mode=0o700)
    data_file(table, one, b"a", b"A")
    data_file(table, one, b"b", b"B")
    table.rename(one.ino, b"a", two.ino, b"a2", 0)  # into a directory without a mirror yet
    assert_mirrors(table, mirror)
    table.rename(one.ino, b"b", two.ino, b"a2", 0)  # over a data file: replaced
    assert_mirrors(table, mirror)
    assert not (Path(mirror.path) / "one").exists()  # left empty: removed
    empty = table.create(one.ino, b"empty", 0o644, 0, 0)
    table.rename(one.ino, b"empty", two.ino, b"a2", 0)  # an empty file over a data file
    assert_mirrors(table, mirror)
    assert not empty.data
    data_file(table, two, b"c", b"C")
    table.rename(ROOT_INO, b"two", one.ino, b"moved", 0)  # a directory with its data
    assert_mirrors(table, mirror)
    assert os.listdir(mirror.path) == ["one"]


def test_exchanges_swap_the_mirrors(table: NodeTable, mirror: DataMirror) -> None:
    one, two = make_dirs(table, b"one"), make_dirs(table, b"two")
    data_file(table, one, b"a", b"A")
    data_file(table, two, b"b", b"B")
    table.create(two.ino, b"empty", 0o644, 0, 0)
    table.rename(one.ino, b"a", two.ino, b"b", RENAME_EXCHANGE)  # both hold data
    assert_mirrors(table, mirror)
    table.rename(one.ino, b"a", two.ino, b"empty", RENAME_EXCHANGE)  # data ↔ empty
    assert_mirrors(table, mirror)
    table.rename(two.ino, b"b", one.ino, b"a", RENAME_EXCHANGE)  # empty ↔ data
    assert_mirrors(table, mirror)
    make_dirs(table, b"three")
    table.rename(ROOT_INO, b"one", ROOT_INO, b"three", RENAME_EXCHANGE)  # directories
    assert_mirrors(table, mirror)


def test_a_directory_holding_data_keeps_its_owner_and_mode(
    table: NodeTable, mirror: DataMirror
) -> None:
    store = make_dirs(table, b"store1")
    data_file(table, store, b"move-journal", b"x")
    table.setattr(store.ino, mode=0o2770, uid=0, gid=BACKUP)
    assert_mirrors(table, mirror)
    assert stat.S_IMODE(os.stat(Path(mirror.path) / "store1").st_mode) == 0o2770
    table.setattr(ROOT_INO, mode=0o777)  # the root's are mount options: the mirror stays private
    assert stat.S_IMODE(os.stat(mirror.path).st_mode) == 0o700


def test_restore_loads_the_data_files_as_they_were(
    table: NodeTable, mirror: DataMirror, data_dir: Path
) -> None:
    store = make_dirs(table, b"store1", b"ns:a", mode=0o750)
    data_file(table, store, b"move-journal", b"line\n" * 1000, mode=0o600)
    table.setattr(store.ino, uid=0)
    big = data_file(table, table.root, b"sparse", b"end")
    table.setattr(big.ino, size=5 << 20)
    (Path(mirror.path) / "empty").touch()  # an empty file vanishes
    (Path(mirror.path) / "store1" / "leftover").mkdir()  # so does an empty directory
    before = table_tree(table)
    mirror.close()
    clock = FakeClock(start=100.0)
    fresh = new_table(clock)
    again = DataMirror(fresh, str(data_dir), MOUNTPOINT)
    again.open()
    restored = again.restore()
    try:
        assert (restored.files, restored.dirs) == (2, 2)
        assert restored.bytes == 5000 + (5 << 20)
        assert table_tree(fresh) == before
        assert_mirrors(fresh, again)
        assert sorted(os.listdir(again.path)) == ["sparse", "store1"]
        fresh.check()
        # No kernel references, nothing open, nothing idle: the data stays however long.
        assert all(node.lookups == 0 and node.opens == 0 for node in fresh.nodes.values())
        clock.advance(10 * DIR_GRACE)
        assert fresh.due() == [] and table_tree(fresh) == before
        assert fresh.observer is again  # and it mirrors from now on
    finally:
        again.close()


def test_what_the_table_cannot_take_fails_the_restore_by_name(
    table: NodeTable, mirror: DataMirror, data_dir: Path
) -> None:
    store = make_dirs(table, b"store1")
    data_file(table, store, b"big", b"x" * 2000)
    mirror.close()
    small = DataMirror(new_table(max_file_size=1000), str(data_dir), MOUNTPOINT)
    small.open()
    with pytest.raises(MirrorError, match=r"store1/big: it is larger than max_file_size"):
        small.restore()
    small.close()
    os.symlink("/etc/passwd", Path(small.path) / "link")
    odd = DataMirror(new_table(), str(data_dir), MOUNTPOINT)
    odd.open()
    with pytest.raises(MirrorError, match=r"link is not a regular file or directory"):
        odd.restore()
    odd.close()
    assert (Path(small.path) / "store1" / "big").stat().st_size == 2000  # nothing dropped


def test_close_removes_only_an_empty_mount_directory(table: NodeTable, data_dir: Path) -> None:
    mirror = start(table, data_dir)
    mirror.close()
    assert os.listdir(data_dir) == []
    mirror = start(table, data_dir)
    data_file(table, table.root, b"keep", b"k")
    mirror.close()
    assert os.listdir(data_dir) == [mirror_name(MOUNTPOINT)]


def test_a_daemon_that_lets_go_in_time_hands_over_its_directory(
    table: NodeTable, mirror: DataMirror, data_dir: Path
) -> None:
    data_file(table, table.root, b"journal", b"j")
    inode = os.stat(mirror.path).st_ino
    mirror.close()
    second = DataMirror(new_table(), str(data_dir), MOUNTPOINT, lock_wait=0.1)
    second.open()
    assert second.restore().files == 1
    assert os.stat(second.path).st_ino == inode  # the same directory, nothing copied
    second.close()


def test_a_daemon_still_serving_elsewhere_is_taken_over(
    table: NodeTable, mirror: DataMirror, data_dir: Path
) -> None:
    """The old daemon's mount is no longer at the path (lazily unmounted, or kept by another
    mount namespace): a new mount there restores its data and takes the directory over; the
    old one's changes from then on are not kept, and it leaves the new one's alone."""
    store = make_dirs(table, b"store1")
    journal = data_file(table, store, b"move-journal", b"line 1\n")
    fresh = new_table()
    second = DataMirror(fresh, str(data_dir), MOUNTPOINT, lock_wait=0.1)
    second.open()
    assert second.restore().files == 1
    assert table_tree(fresh) == table_tree(table)
    assert_mirrors(fresh, second)
    table.write(journal.ino, 7, b"old daemon\n")  # not kept any more
    data_file(table, store, b"other", b"x")
    new_journal = fresh.child(fresh.child(ROOT_INO, b"store1").ino, b"move-journal")
    fresh.write(new_journal.ino, 7, b"line 2\n")
    assert_mirrors(fresh, second)
    mirror.close()
    assert_mirrors(fresh, second)
    assert sorted(os.listdir(data_dir)) == [mirror_name(MOUNTPOINT)]  # the old copy is gone
    second.close()


def test_a_mount_directory_removed_by_hand_is_written_again(
    table: NodeTable, mirror: DataMirror
) -> None:
    store = make_dirs(table, b"store1")
    journal = data_file(table, store, b"move-journal", b"line 1\n")
    data_file(table, table.root, b"other", b"x")
    shutil.rmtree(mirror.path)
    table.write(journal.ino, 7, b"line 2\n")
    assert_mirrors(table, mirror)


def test_an_interrupted_takeover_leaves_nothing(table: NodeTable, data_dir: Path) -> None:
    data_dir.mkdir(mode=0o700)
    (data_dir / ".lockfs-new-1-2" / "store1").mkdir(parents=True)
    (data_dir / ".lockfs-new-1-2" / "store1" / "move-journal").write_bytes(b"copy")
    mirror = start(table, data_dir)
    assert os.listdir(data_dir) == [mirror_name(MOUNTPOINT)]
    assert table_tree(table) == {}
    mirror.close()


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        ("owned by another user", "must be owned by root"),
        ("group-writable", "writable only by root"),
        ("a symlink", "is a symbolic link"),
        ("below a world-writable directory", "can be renamed or replaced by every user"),
    ],
)
def test_an_unsafe_directory_is_refused(tmp_path: Path, attack: str, message: str) -> None:
    data_dir = tmp_path / "data"
    if attack == "owned by another user":
        data_dir.mkdir(mode=0o700)
        os.chown(data_dir, BACKUP, BACKUP)
    elif attack == "group-writable":
        data_dir.mkdir()
        data_dir.chmod(0o770)
    elif attack == "a symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        data_dir.symlink_to(tmp_path / "elsewhere")
    else:
        (tmp_path / "open").mkdir()
        (tmp_path / "open").chmod(0o777)
        data_dir = tmp_path / "open" / "data"
    with pytest.raises(MirrorError, match=message):
        DataMirror(new_table(), str(data_dir), MOUNTPOINT).open()


def test_missing_directories_are_made_root_only(tmp_path: Path) -> None:
    mirror = DataMirror(new_table(), str(tmp_path / "a" / "data"), MOUNTPOINT)
    mirror.open()
    for path in (tmp_path / "a", tmp_path / "a" / "data", Path(mirror.path)):
        st_ = os.stat(path)
        assert (st_.st_uid, stat.S_IMODE(st_.st_mode)) == (0, 0o700), path
    mirror.close()


def test_discard_removes_what_an_earlier_mount_kept(table: NodeTable, data_dir: Path) -> None:
    """lockfs switch-over: the plain directory it replaces is newer than such data."""
    mirror = start(table, data_dir)
    data_file(table, make_dirs(table, b"store1"), b"move-journal", b"old\n")
    mirror.close()
    assert discard(str(data_dir), MOUNTPOINT)
    assert os.listdir(data_dir) == []
    assert not discard(str(data_dir), MOUNTPOINT)
    assert not discard(str(data_dir / "missing"), MOUNTPOINT)


# --- All or nothing -----------------------------------------------------------------------------


def no_space(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_write_that_cannot_be_mirrored_changes_nothing(
    table: NodeTable, mirror: DataMirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_dirs(table, b"store1")
    journal = data_file(table, store, b"move-journal", b"kept\n")
    fresh = table.create(store.ino, b"new", 0o644, 0, 0)
    deep = make_dirs(table, b"a", b"b")
    other = table.create(deep.ino, b"c", 0o644, 0, 0)
    before = table_tree(table)
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    fails(errno.ENOSPC, table.write, journal.ino, 5, b"lost\n")
    fails(errno.ENOSPC, table.write, fresh.ino, 0, b"lost\n")
    fails(errno.ENOSPC, table.write, other.ino, 0, b"lost\n")
    assert table_tree(table) == before and not fresh.data and not other.data
    assert_mirrors(table, mirror)  # no new file, no new directory left behind
    monkeypatch.setattr(os, "mkdir", no_space)
    fails(errno.ENOSPC, table.rename, ROOT_INO, b"store1", deep.ino, b"store1", 0)
    assert table.child(ROOT_INO, b"store1") is store
    monkeypatch.undo()
    table.write(journal.ino, 5, b"next\n")
    assert_mirrors(table, mirror)


def test_other_errors_fail_with_eio(
    table: NodeTable, mirror: DataMirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = data_file(table, table.root, b"move-journal", b"kept\n")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "ftruncate", broken)
    fails(errno.EIO, table.setattr, journal.ino, size=2, mode=0o600, uid=0)
    assert (journal.size, stat.S_IMODE(journal.mode), journal.uid) == (5, 0o640, BACKUP)
    assert_mirrors(table, mirror)  # its new owner and mode were put back
    monkeypatch.setattr(os, "unlink", broken)
    fails(errno.EIO, table.unlink, ROOT_INO, b"move-journal")
    assert table.child(ROOT_INO, b"move-journal") is journal
    monkeypatch.undo()
    assert_mirrors(table, mirror)


def test_an_undo_that_fails_is_not_an_errno(
    table: NodeTable, mirror: DataMirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the mirror cannot be put back, the request must not look like a clean failure."""
    fresh = table.create(ROOT_INO, b"new", 0o644, 0, 0)
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    monkeypatch.setattr(os, "unlink", no_space)
    with pytest.raises(MirrorDiverged):
        table.write(fresh.ino, 0, b"x")


def test_a_mirror_removed_by_hand_is_rewritten(table: NodeTable, mirror: DataMirror) -> None:
    journal = data_file(table, table.root, b"move-journal", b"line 1\n")
    os.unlink(Path(mirror.path) / "move-journal")
    table.write(journal.ino, 7, b"line 2\n")
    assert_mirrors(table, mirror)


# --- Random request sequences -------------------------------------------------------------------

NAMES = st.sampled_from([b"a", b"b", b"c"])
PICK = st.integers(min_value=0, max_value=50)
SIZES = st.sampled_from([0, 1, 5, 4096, 70_000])


class MirrorMachine(RuleBasedStateMachine):
    """Random changes through the table; after each, the mirror holds exactly the table's
    data files, and a restore from it gives the same tree."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="lockfs-mirror-")
        self.table = new_table(max_file_size=100_000, max_depth=3)
        self.mirror = start(self.table, os.path.join(self.tmp, "data"))

    def nodes(self, dirs: bool | None = None) -> list[Node]:
        return [
            node
            for node in sorted(self.table.nodes.values(), key=lambda node: node.ino)
            if node.ino != ROOT_INO and (dirs is None or (node.children is not None) == dirs)
        ]

    def pick(self, index: int, dirs: bool | None = None) -> Node | None:
        nodes = self.nodes(dirs)
        return nodes[index % len(nodes)] if nodes else None

    def directory(self, index: int) -> Node:
        return self.pick(index, dirs=True) or self.table.root

    def attempt(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        with contextlib.suppress(FsError):
            fn(*args, **kwargs)

    @initialize()
    def seed(self) -> None:
        """Two data files, an empty one and an empty directory to start from."""
        store = make_dirs(self.table, b"s")
        data_file(self.table, store, b"j", b"journal\n")
        data_file(self.table, store, b"a", b"other\n")
        self.table.create(ROOT_INO, b"b", 0o640, BACKUP, BACKUP)
        make_dirs(self.table, b"c")

    @rule(parent=PICK, name=NAMES, directory=st.booleans())
    def create(self, parent: int, name: bytes, directory: bool) -> None:
        make = self.table.mkdir if directory else self.table.create
        self.attempt(make, self.directory(parent).ino, name, 0o755, BACKUP, BACKUP)

    @rule(pick=PICK, offset=SIZES, size=st.integers(min_value=1, max_value=3000))
    def write(self, pick: int, offset: int, size: int) -> None:
        node = self.pick(pick, dirs=False)
        if node is not None:
            self.attempt(self.table.write, node.ino, offset, bytes([pick % 256]) * size)

    @rule(pick=PICK, size=SIZES)
    def truncate(self, pick: int, size: int) -> None:
        node = self.pick(pick, dirs=False)
        if node is not None:
            self.attempt(self.table.setattr, node.ino, size=size)

    @rule(pick=PICK, mode=st.sampled_from([0o600, 0o2750, 0o4755]), uid=st.sampled_from([0, 34]))
    def chmod(self, pick: int, mode: int, uid: int) -> None:
        node = self.pick(pick)
        if node is not None:
            self.attempt(self.table.setattr, node.ino, mode=mode, uid=uid)

    @rule(pick=PICK)
    def unlink(self, pick: int) -> None:
        node = self.pick(pick)
        if node is not None and node.parent is not None:
            remove = self.table.rmdir if node.children is not None else self.table.unlink
            self.attempt(remove, node.parent.ino, node.name)

    @rule(
        pick=PICK,
        onto=PICK,
        name=st.one_of(st.none(), NAMES),
        flags=st.sampled_from([0, RENAME_NOREPLACE, RENAME_EXCHANGE]),
    )
    def rename(self, pick: int, onto: int, name: bytes | None, flags: int) -> None:
        """Rename a node to ``name`` in a directory, or (no name) onto another node's name."""
        node = self.pick(pick)
        if node is None or node.parent is None:
            return
        if name is not None:
            parent = self.directory(onto)
        else:
            other = self.pick(onto)
            if other is None or other.parent is None:
                return
            parent, name = other.parent, other.name
        self.attempt(self.table.rename, node.parent.ino, node.name, parent.ino, name, flags)

    @invariant()
    def mirrors(self) -> None:
        assert_mirrors(self.table, self.mirror)

    def teardown(self) -> None:
        try:
            expected = table_tree(self.table)
            self.mirror.close()
            fresh = new_table(max_file_size=100_000, max_depth=3)
            again = start(fresh, os.path.join(self.tmp, "data"))
            assert table_tree(fresh) == expected
            fresh.check()
            again.close()
        finally:
            shutil.rmtree(self.tmp)


MirrorMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
)
test_random_changes_keep_the_mirror_exact = MirrorMachine.TestCase
