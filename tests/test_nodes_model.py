"""Model-based test of the node table: random request sequences against a shadow namespace.

The machine plays the kernel. It keeps what the kernel holds (lookup counts and open handles
per inode) and a shadow of the namespace it created, and only sends requests the kernel could
send (on inodes it references). It sends them through the table methods the adapter
(lockfs.fuse_ops) calls, with the arguments the adapter passes on, so a rule broken there
shows up here. After every step it checks that the table agrees with the shadow (and saw
every use), that only idle, unreferenced nodes whose delay passed ever vanished, that inode
numbers are never reused, and, on a copy of the table, that nothing leaks once every
reference is gone.
"""

from __future__ import annotations

import copy
import errno
import os
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from support import FakeClock, FakeWallClock

from lockfs.nodes import (
    NAME_MAX,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    Capacity,
    FsError,
    Limits,
    Node,
    NodeTable,
    ReclaimPolicy,
)

FILE_DELAY = 1.0
DIR_GRACE = 3.0
#: Entry limits (max_entries) an example runs with: small ones make creating hit ENOSPC.
MAX_ENTRIES = st.sampled_from([1_000_000, 6, 4])
NAMES = st.sampled_from([b"a", b"b", b"c"])
PICK = st.integers(min_value=0, max_value=50)
KINDS = st.sampled_from(["create", "mknod", "mkdir"])
FLAGS = st.sampled_from([0, RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_NOREPLACE | RENAME_EXCHANGE])
#: open(2) flags as OPEN passes them on (O_CREAT and O_EXCL are the kernel's; O_TRUNC is not).
OPEN_FLAGS = st.sampled_from(
    [
        os.O_RDONLY,
        os.O_WRONLY,
        os.O_RDWR | os.O_APPEND,
        os.O_RDWR | os.O_TRUNC,
        os.O_WRONLY | os.O_TRUNC | os.O_APPEND,
    ]
)
#: A readdirplus entry as the kernel received it: name, inode, cookie.
Listed = tuple[bytes, int, int]


@dataclass
class Shadow:
    """What the machine expects of one node."""

    ino: int
    is_dir: bool
    parent: int | None
    name: bytes
    data: bytearray = field(default_factory=bytearray)
    #: Latest time the machine certainly used the node (the table's last_used is >= this).
    last_use: float = 0.0


def _delay(shadow: Shadow) -> float:
    """How long the table must leave an idle node alone."""
    return DIR_GRACE if shadow.is_dir else FILE_DELAY


def drain(table: NodeTable, clock: FakeClock, opens: dict[int, int]) -> None:
    """Every process goes away; the kernel keeps its entries until the table asks for them.

    Handles are released and unlinked nodes forgotten (the kernel drops their dentries by
    itself); then time passes and the kernel honours every invalidation: each node due()
    hands out is forgotten. So this only empties the table if the table never loses track of
    an idle node the kernel still references (one it would otherwise keep until memory
    pressure).
    """
    for ino, count in opens.items():
        for _ in range(count):
            table.release(ino)
    for node in list(table.nodes.values()):
        if node.parent is None and node.lookups:
            table.forget(node.ino, node.lookups)
    for _ in range(2 * len(table.nodes) + 2):
        before = len(table.nodes)
        clock.advance(max(FILE_DELAY, DIR_GRACE))
        for node in table.due():
            table.forget(node.ino, node.lookups)
        if len(table.nodes) == before and not table.idle_count:
            break
    else:
        raise AssertionError("due() kept handing out or dropping nodes")


class NodeTableMachine(RuleBasedStateMachine):
    """Drives a NodeTable like a kernel would and checks it against a shadow namespace."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.table = NodeTable(
            policy=ReclaimPolicy(file_delay=FILE_DELAY, dir_grace=DIR_GRACE),
            limits=Limits(),
            clock=self.clock,
            wall_clock_ns=FakeWallClock(),
        )
        self.shadow: dict[int, Shadow] = {ROOT_INO: Shadow(ROOT_INO, True, ROOT_INO, b"")}
        self.lookups: dict[int, int] = {}
        self.opens: dict[int, int] = {}
        #: Handles whose RELEASE is still in flight after the kernel evicted the inode (FORGET
        #: may overtake RELEASE); they can only be released.
        self.closing: dict[int, int] = {}
        self.max_ino = ROOT_INO
        self.vanished: set[int] = set()

    # ------------------------------------------------------------- model helpers

    @property
    def now(self) -> float:
        return self.clock.now

    def used(self, *inos: int | None) -> None:
        """Record a use the table certainly saw as a touch (now)."""
        for ino in inos:
            if ino is not None and ino in self.shadow:
                self.shadow[ino].last_use = self.now

    def referenced(self, ino: int) -> bool:
        """Whether the kernel holds a lookup or an open handle on ``ino``."""
        return ino == ROOT_INO or self.lookups.get(ino, 0) > 0 or self.opens.get(ino, 0) > 0

    def known(self, *, dirs: bool | None = None) -> list[int]:
        """Inodes the kernel references (root included), optionally only dirs or files."""
        return sorted(
            ino
            for ino, s in self.shadow.items()
            if self.referenced(ino) and (dirs is None or s.is_dir == dirs)
        )

    def lookups_held(self, *, dirs: bool | None = None) -> list[int]:
        """Inodes the kernel holds a lookup on (root included): it can open them."""
        return [i for i in self.known(dirs=dirs) if i == ROOT_INO or self.lookups.get(i, 0)]

    def in_use(self) -> list[int]:
        """Inodes a process can name: the kernel holds a lookup or the process an open handle
        (so it can stat, fstat, ftruncate them)."""
        held = self.lookups_held() + [i for i in self.opens if self.open_handles(i) > 0]
        return sorted(set(held))

    def open_handles(self, ino: int) -> int:
        """Handles of ``ino`` a process can still use (not being released)."""
        return self.opens.get(ino, 0) - self.closing.get(ino, 0)

    @staticmethod
    def pick(candidates: list[int], index: int) -> int | None:
        """One of ``candidates`` (shrinks towards the first), or None."""
        return candidates[index % len(candidates)] if candidates else None

    def children(self, ino: int) -> dict[bytes, int]:
        """The shadow's entries of directory ``ino``."""
        return {
            s.name: s.ino for s in self.shadow.values() if s.parent == ino and s.ino != ROOT_INO
        }

    def is_ancestor_or_self(self, ancestor: int, ino: int | None) -> bool:
        """Whether ``ancestor`` is ``ino`` or above it in the shadow tree."""
        while ino is not None:
            if ino == ancestor:
                return True
            if ino == ROOT_INO:
                return False
            ino = self.shadow[ino].parent
        return False

    def name_in(self, directory: int, name: bytes, existing: bool) -> bytes:
        """``name``, or with ``existing`` one of the directory's names (chosen by ``name``)."""
        names = sorted(self.children(directory))
        if existing and names:
            return names[ord(name) % len(names)]
        return name

    def detach(self, ino: int) -> None:
        """A name went away on a process's request; the node lives while referenced."""
        self.shadow[ino].parent = None

    def expect(self, errors: set[int], call: object) -> bool:
        """Run ``call``; it must fail with one of ``errors`` if any, else succeed."""
        assert callable(call)
        try:
            call()
        except FsError as exc:
            assert errors, f"unexpected {errno.errorcode[exc.errno]}"
            assert exc.errno in errors, (errno.errorcode[exc.errno], errors)
            return False
        assert not errors, f"expected one of {[errno.errorcode[e] for e in errors]}"
        return True

    # ------------------------------------------------------------- namespace requests

    @initialize(
        tree=st.lists(
            st.tuples(PICK, NAMES, KINDS, st.booleans(), st.sampled_from(["keep", "forget", "rm"])),
            max_size=10,
        ),
        max_entries=MAX_ENTRIES,
    )
    def populate(self, tree: list[tuple[int, bytes, str, bool, str]], max_entries: int) -> None:
        """Start from a random tree, so that requests often find something to work on.

        Files may get data and be closed; then the kernel keeps the entry, forgets it, or a
        process removes it while the kernel still holds it. The entry limit is set first.
        """
        self.table.limits.max_entries = max_entries
        for p, name, kind, data, then in tree:
            before = set(self.shadow)
            self.make(p, name, kind, existing=False)
            new = set(self.shadow) - before
            if not new:
                continue
            (ino,) = new
            if kind == "create":
                if data:
                    self.table.write(ino, 0, b"x")
                    self.shadow[ino].data[:] = b"x"
                self.table.release(ino)
                self.opens[ino] = 0
            if then == "forget":
                self.table.forget(ino, 1)
                self.lookups[ino] = 0
            elif then == "rm":
                parent = self.shadow[ino].parent
                assert parent is not None
                remove = self.table.rmdir if kind == "mkdir" else self.table.unlink
                remove(parent, name)
                self.detach(ino)

    @rule(p=PICK, name=NAMES, kind=KINDS, existing=st.booleans())
    def make(self, p: int, name: bytes, kind: str, existing: bool) -> None:
        """CREATE, MKNOD or MKDIR in a directory the kernel holds (maybe an existing name)."""
        parent = self.pick(self.lookups_held(dirs=True), p)
        assert parent is not None  # the root is always known
        name = self.name_in(parent, name, existing)
        errors = set()
        if self.shadow[parent].parent is None:
            errors.add(errno.ENOENT)
        if name in self.children(parent):
            errors.add(errno.EEXIST)
        if len(self.shadow) >= self.table.limits.max_entries:
            errors.add(errno.ENOSPC)
        made = []
        mode = 0o755 if kind == "mkdir" else 0o644
        method = getattr(self.table, kind)
        if not self.expect(errors, lambda: made.append(method(parent, name, mode, 0, 0))):
            return
        node = made[0]
        assert node.ino > self.max_ino, "inode numbers must increase"
        self.max_ino = node.ino
        self.shadow[node.ino] = Shadow(node.ino, kind == "mkdir", parent, name, last_use=self.now)
        self.lookups[node.ino] = 1
        self.opens[node.ino] = 1 if kind == "create" else 0
        self.used(parent)

    @rule(p=PICK, name=NAMES, existing=st.booleans())
    def lookup(self, p: int, name: bytes, existing: bool) -> None:
        """LOOKUP a name in a directory the kernel holds."""
        parent = self.pick(self.lookups_held(dirs=True), p)
        assert parent is not None
        name = self.name_in(parent, name, existing)
        expected = self.children(parent).get(name)
        found = self.table.lookup(parent, name)
        if expected is None:
            assert found is None, "an absent name was found"
            return
        assert found is not None and found.ino == expected
        self.lookups[expected] = self.lookups.get(expected, 0) + 1
        self.used(expected, parent)

    @rule(p=PICK, name=NAMES, existing=st.booleans())
    def unlink(self, p: int, name: bytes, existing: bool) -> None:
        """UNLINK a name."""
        parent = self.pick(self.lookups_held(dirs=True), p)
        assert parent is not None
        name = self.name_in(parent, name, existing)
        target = self.children(parent).get(name)
        errors = set()
        if target is None:
            errors.add(errno.ENOENT)
        elif self.shadow[target].is_dir:
            errors.add(errno.EISDIR)
        if self.expect(errors, lambda: self.table.unlink(parent, name)):
            assert target is not None
            self.detach(target)
            self.used(parent)

    @rule(p=PICK, name=NAMES, existing=st.booleans())
    def rmdir(self, p: int, name: bytes, existing: bool) -> None:
        """RMDIR a name."""
        parent = self.pick(self.lookups_held(dirs=True), p)
        assert parent is not None
        name = self.name_in(parent, name, existing)
        target = self.children(parent).get(name)
        errors = set()
        if target is None:
            errors.add(errno.ENOENT)
        elif not self.shadow[target].is_dir:
            errors.add(errno.ENOTDIR)
        elif self.children(target):
            errors.add(errno.ENOTEMPTY)
        if self.expect(errors, lambda: self.table.rmdir(parent, name)):
            assert target is not None
            self.detach(target)
            self.used(parent)

    @rule(p=PICK, q=PICK, old=NAMES, new=NAMES, flags=FLAGS, existing=st.booleans())
    def rename(self, p: int, q: int, old: bytes, new: bytes, flags: int, existing: bool) -> None:
        """RENAME (renameat2 flags included) between directories the kernel holds."""
        dirs = self.lookups_held(dirs=True)
        old_parent, new_parent = self.pick(dirs, p), self.pick(dirs, q)
        assert old_parent is not None and new_parent is not None
        old = self.name_in(old_parent, old, existing)
        new = self.name_in(new_parent, new, existing)
        src = self.children(old_parent).get(old)
        dst = self.children(new_parent).get(new)
        errors = set()
        if flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            errors.add(errno.EINVAL)
        if src is None or self.shadow[new_parent].parent is None:
            errors.add(errno.ENOENT)
        if src is not None:
            src_dir = self.shadow[src].is_dir
            if src_dir and self.is_ancestor_or_self(src, new_parent):
                errors.add(errno.EINVAL)
            if flags & RENAME_EXCHANGE:
                if dst is None:
                    errors.add(errno.ENOENT)
                elif self.shadow[dst].is_dir and self.is_ancestor_or_self(dst, old_parent):
                    errors.add(errno.EINVAL)
            elif dst is not None and dst != src:
                dst_dir = self.shadow[dst].is_dir
                if flags & RENAME_NOREPLACE:
                    errors.add(errno.EEXIST)
                if src_dir and not dst_dir:
                    errors.add(errno.ENOTDIR)
                if src_dir and dst_dir and self.children(dst):
                    errors.add(errno.ENOTEMPTY)
                if not src_dir and dst_dir:
                    errors.add(errno.EISDIR)
        call = lambda: self.table.rename(old_parent, old, new_parent, new, flags)  # noqa: E731
        if not self.expect(errors, call):
            return
        assert src is not None
        if flags & RENAME_EXCHANGE:
            assert dst is not None
            if dst != src:
                s, d = self.shadow[src], self.shadow[dst]
                s.parent, s.name, d.parent, d.name = d.parent, d.name, s.parent, s.name
            self.used(src, dst, old_parent, new_parent)
        elif dst != src:
            if dst is not None:
                self.detach(dst)
            self.shadow[src].parent = new_parent
            self.shadow[src].name = new
            self.used(src, old_parent, new_parent)

    def readdirplus(self, directory: int, after: int, room: int | None) -> list[Listed]:
        """One READDIRPLUS request, as the adapter makes it, into a reply with room for ``room``
        entries (all if None): the entries sent. Listing uses the directory."""
        sent: list[Listed] = []

        def reply(name: bytes, node: Node, cookie: int) -> bool:
            if room is not None and len(sent) >= room:
                return False  # the kernel's buffer is full
            sent.append((name, node.ino, cookie))
            return True

        self.table.readdirplus(directory, after, reply)
        self.used(directory)
        return sent

    def take_listed(self, sent: list[Listed]) -> None:
        """The kernel takes a lookup reference on every entry a readdirplus reply held,
        except "." and ".." (fuse_direntplus_link skips them); an entry is not a use."""
        for name, ino, _ in sent:
            if name != b"." and name != b"..":
                self.lookups[ino] = self.lookups.get(ino, 0) + 1

    @rule(p=PICK, room=st.integers(min_value=0, max_value=5), resume=PICK)
    def readdir(self, p: int, room: int, resume: int) -> None:
        """`ls`: READDIRPLUS until the end, the first reply holding ``room`` entries; then a
        listing resumed after one of the cookies (a seekdir) gives exactly the rest."""
        directory = self.pick(self.lookups_held(dirs=True), p)
        assert directory is not None
        full = self.readdirplus(directory, 0, room)
        while True:
            more = self.readdirplus(directory, full[-1][2] if full else 0, None)
            if not more:
                break
            full += more
        self.take_listed(full)
        shadow = self.shadow[directory]
        dotdot = directory if shadow.parent is None else shadow.parent
        expected = [(b".", directory), (b"..", dotdot)]
        expected += sorted(self.children(directory).items(), key=lambda item: item[1])
        assert [(name, ino) for name, ino, _ in full] == expected
        cookies = [cookie for _, _, cookie in full]
        assert cookies == sorted(set(cookies))
        cut = resume % len(full)
        rest = self.readdirplus(directory, cookies[cut], None)
        self.take_listed(rest)
        assert rest == full[cut + 1 :]

    # ------------------------------------------------------------- references

    @rule(p=PICK, count=st.integers(min_value=1, max_value=3))
    def forget(self, p: int, count: int) -> None:
        """FORGET some lookups of an inode no handle pins (the kernel evicts it)."""
        candidates = sorted(
            ino for ino, n in self.lookups.items() if n > 0 and not self.opens.get(ino)
        )
        ino = self.pick(candidates, p)
        if ino is None:
            return
        count = min(count, self.lookups[ino])
        self.table.forget(ino, count)
        self.lookups[ino] -= count

    @rule(p=PICK)
    def forget_before_release(self, p: int) -> None:
        """Every handle was closed and the inode evicted, but FORGET overtakes the RELEASEs."""
        candidates = sorted(
            ino
            for ino, n in self.lookups.items()
            if n > 0 and self.opens.get(ino, 0) > self.closing.get(ino, 0)
        )
        ino = self.pick(candidates, p)
        if ino is None:
            return
        self.table.forget(ino, self.lookups[ino])
        self.lookups[ino] = 0
        self.closing[ino] = self.opens[ino]

    @rule(p=PICK, flags=OPEN_FLAGS)
    def open(self, p: int, flags: int) -> None:
        """OPEN a known file with the flags the kernel passes on, or OPENDIR a known directory."""
        ino = self.pick(self.lookups_held(), p)
        assert ino is not None
        if self.shadow[ino].is_dir:
            node = self.table.opendir(ino)
        else:
            node = self.table.open(ino, flags)
            if flags & os.O_TRUNC:
                self.shadow[ino].data.clear()
        assert node.ino == ino
        self.opens[ino] = self.opens.get(ino, 0) + 1
        self.used(ino)

    @rule(p=PICK)
    def release(self, p: int) -> None:
        """RELEASE one open handle."""
        ino = self.pick(sorted(i for i, n in self.opens.items() if n > 0), p)
        if ino is None:
            return
        self.table.release(ino)
        self.opens[ino] -= 1
        if self.closing.get(ino):
            self.closing[ino] -= 1
        self.used(ino)

    # ------------------------------------------------------------- data

    @rule(p=PICK, offset=st.integers(min_value=0, max_value=4), buf=st.binary(max_size=3))
    def write(self, p: int, offset: int, buf: bytes) -> None:
        """WRITE through an open handle of a file."""
        handles = sorted(
            i for i in self.opens if self.open_handles(i) > 0 and not self.shadow[i].is_dir
        )
        ino = self.pick(handles, p)
        if ino is None:
            return
        assert self.table.write(ino, offset, buf) == len(buf)
        if buf:
            data = self.shadow[ino].data
            if offset > len(data):
                data.extend(bytes(offset - len(data)))
            data[offset : offset + len(buf)] = buf
            self.used(ino)

    @rule(
        p=PICK,
        size=st.sampled_from([None, 0, 0, 1, 3]),
        mode=st.sampled_from([None, 0o600, 0o2775]),
    )
    def setattr(self, p: int, size: int | None, mode: int | None) -> None:
        """SETATTR size (truncate) and/or mode on a known inode; a size for a directory gives
        EISDIR."""
        ino = self.pick(sorted(set(self.in_use()) - {ROOT_INO}), p)
        if ino is None:
            return
        shadow = self.shadow[ino]
        errors = {errno.EISDIR} if shadow.is_dir and size is not None else set()
        if self.expect(errors, lambda: self.table.setattr(ino, size=size, mode=mode)):
            if size is not None:
                del shadow.data[size:]
                shadow.data.extend(bytes(size - len(shadow.data)))
            if mode is not None:
                assert self.table.nodes[ino].mode & 0o7777 == mode
            self.used(ino)

    @rule(p=PICK)
    def getattr(self, p: int) -> None:
        """GETATTR (stat, fstat) of an inode in use: a use of it."""
        ino = self.pick(self.in_use(), p)
        assert ino is not None  # the root is always in use
        node = self.table.getattr(ino)
        assert node.ino == ino and bytes(node.data or b"") == bytes(self.shadow[ino].data)
        self.used(ino)

    @rule(p=PICK, q=PICK, name=NAMES, long=st.booleans())
    def refused(self, p: int, q: int, name: bytes, long: bool) -> None:
        """LINK and SYMLINK (EPERM; ENAMETOOLONG for an impossible name) and READLINK (EINVAL)
        change nothing; STATFS counts what is left of the entry limit."""
        ino = self.pick(self.in_use(), p)
        parent = self.pick(self.lookups_held(dirs=True), q)
        assert ino is not None and parent is not None
        if long:
            name *= NAME_MAX + 1
        refusal = {errno.ENAMETOOLONG} if long else {errno.EPERM}
        self.expect(refusal, lambda: self.table.link(ino, parent, name))
        self.expect(refusal, lambda: self.table.symlink(parent, name, b"target"))
        self.expect({errno.EINVAL}, lambda: self.table.readlink(ino))
        limit = self.table.limits.max_entries
        assert self.table.capacity() == Capacity(limit, limit - len(self.shadow), NAME_MAX)

    @rule(p=PICK, offset=st.integers(min_value=0, max_value=4), size=st.integers(0, 4))
    def read(self, p: int, offset: int, size: int) -> None:
        """READ returns exactly what was written."""
        ino = self.pick(self.lookups_held(dirs=False), p)
        if ino is None:
            return
        want = bytes(self.shadow[ino].data[offset : offset + size])
        assert self.table.read(ino, offset, size) == want

    # ------------------------------------------------------------- time and reclaim

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 3.0]))
    def advance(self, seconds: float) -> None:
        """Time passes."""
        self.clock.advance(seconds)

    @rule(
        seconds=st.sampled_from([0.0, 1.0, 3.0]),
        race=st.booleans(),
        listed=st.booleans(),
    )
    def reclaim(self, seconds: float, race: bool, listed: bool) -> None:
        """Time passes, due(), then the kernel invalidates every returned entry not open.

        With ``race``, a process opens each returned node before the invalidation arrives.
        With ``listed``, a readdirplus reply for it is processed only after the kernel has
        forgotten the old references: the kernel keeps the listing's one.
        """
        self.clock.advance(seconds)
        for node in self.table.due():
            shadow = self.shadow[node.ino]
            assert self.lookups.get(node.ino, 0) > 0, "due() handed out an unreferenced node"
            assert not self.opens.get(node.ino) and node.opens == 0, "handed out an open node"
            assert shadow.parent is not None and node.parent is not None
            assert not shadow.data and not self.children(node.ino)
            assert self.now - shadow.last_use >= _delay(shadow), "handed out before its delay"
            if race:
                (self.table.opendir if node.is_dir else self.table.open)(node.ino)
                self.opens[node.ino] = 1
                self.used(node.ino)
            sent = []
            if listed:  # `ls` of the parent, from just before the node, one entry
                sent = self.readdirplus(shadow.parent, node.ino + 1, 1)
                assert sent == [(node.name, node.ino, node.ino + 2)]
            if not self.opens.get(node.ino):
                self.table.forget(node.ino, self.lookups[node.ino])
                self.lookups[node.ino] = 0
            self.take_listed(sent)

    # ------------------------------------------------------------- invariants

    @invariant()
    def table_consistent(self) -> None:
        """After every step: reconcile vanished nodes, compare, and check for leaks."""
        self.only_idle_unreferenced_nodes_vanish()
        self.table_matches_shadow()
        self.nothing_leaks()

    def only_idle_unreferenced_nodes_vanish(self) -> None:
        """Every node missing from the table was allowed to go; the shadow follows."""
        gone = {ino for ino in self.shadow if ino not in self.table.nodes}
        assert ROOT_INO not in gone
        while gone:
            leaves = [ino for ino in gone if not self.children(ino)]
            assert leaves, f"non-empty directories vanished: {sorted(gone)}"
            for ino in leaves:
                shadow = self.shadow.pop(ino)
                gone.discard(ino)
                self.vanished.add(ino)
                assert not self.referenced(ino), f"referenced node {ino} vanished"
                if shadow.parent is not None:  # reclaimed by the table, not just forgotten
                    assert not shadow.data, f"file {ino} with data was reclaimed"
                    waited = self.now - shadow.last_use
                    assert waited >= _delay(shadow), f"{ino} reclaimed after {waited}s"
                    self.used(shadow.parent)  # _reclaim is a use of the directory
                self.lookups.pop(ino, None)
                self.opens.pop(ino, None)
                self.closing.pop(ino, None)

    def table_matches_shadow(self) -> None:
        """Same nodes, names, kinds, data and reference counts as the model; check() holds."""
        self.table.check()
        assert set(self.table.nodes) == set(self.shadow)
        assert not self.vanished & set(self.table.nodes), "an inode number came back"
        assert max(self.table.nodes) <= self.max_ino
        for ino, shadow in self.shadow.items():
            node = self.table.nodes[ino]
            assert node.ino == ino and node.is_dir == shadow.is_dir
            assert node.last_used >= shadow.last_use, "a use the table did not see"
            assert node.lookups == self.lookups.get(ino, 0)
            assert node.opens == self.opens.get(ino, 0)
            assert bytes(node.data or b"") == bytes(shadow.data), "data lost or changed"
            if ino == ROOT_INO:
                continue
            if shadow.parent is None:
                assert node.parent is None
                assert self.referenced(ino), "unreferenced unlinked node kept"
            else:
                assert node.parent is not None and node.parent.ino == shadow.parent
                assert node.name == shadow.name
                assert self.table.child(shadow.parent, shadow.name) is node

    def nothing_leaks(self) -> None:
        """On a copy: once every reference is gone, only data files and their parents stay."""
        table, clock = copy.deepcopy((self.table, self.clock))
        assert table.clock is clock
        drain(table, clock, self.opens)
        table.check()
        keep = {ROOT_INO}
        for ino, shadow in self.shadow.items():
            if shadow.is_dir or not shadow.data or shadow.parent is None:
                continue
            cursor: int | None = ino
            while cursor is not None and cursor not in keep:
                keep.add(cursor)
                cursor = self.shadow[cursor].parent
        assert set(table.nodes) == keep
        for ino in keep:
            assert bytes(table.nodes[ino].data or b"") == bytes(self.shadow[ino].data)


NodeTableMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestNodeTableModel = NodeTableMachine.TestCase
