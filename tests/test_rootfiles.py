"""Files lockfs writes as root (the metrics file, the fallback log file, the control socket):
whoever owns the directory they are in cannot redirect them (lockfs.rootfiles).

The attacks run as a real unprivileged user (useradd) who owns the metrics directory, as
Debian's node-exporter gives its textfile directory to ``prometheus``; the racer is a real
process replacing every name root writes with a symlink to a root-only canary file. The log
file's own tests are in tests/test_logs.py.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import HELPERS, MakeMount, as_user, wait_for

from lockfs import control, rootfiles
from lockfs.daemon import Daemon
from lockfs.options import MountOptions

CANARY = "root only: lockfs must never write here\n"
#: Names the racer swaps for symlinks before it stops (about two per metrics rewrite).
RACER_ACTS = 60


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's own are 0700), removed afterwards: a test
    names it before ``make_mount``, so that its daemons are gone by then."""
    path = Path(tempfile.mkdtemp(prefix="lockfs-rootfiles-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def owned_dir(path: Path, user: pwd.struct_passwd) -> Path:
    """``path`` made a directory of ``user`` (0755), as node-exporter's textfile directory."""
    path.mkdir()
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A root-only file (0600, in pytest's root-only directory) that must stay untouched."""
    path = tmp_path / "canary"
    path.write_text(CANARY)
    path.chmod(0o600)
    return path


def assert_untouched(canary: Path) -> None:
    assert canary.read_text() == CANARY
    st = canary.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)


def metrics_in(path: Path) -> bool:
    """Whether ``path`` is a regular file (not a symlink) holding lockfs's metrics."""
    try:
        return stat.S_ISREG(path.lstat().st_mode) and "lockfs_nodes{" in path.read_text()
    except OSError:
        return False


def test_the_metrics_directorys_owner_cannot_redirect_roots_writes(
    public_dir: Path,
    make_mount: MakeMount,
    second_user: pwd.struct_passwd,
    canary: Path,
) -> None:
    """The owner of the textfile directory races every rewrite (inotify): each name that
    appears (the temporary file, the metrics file) is swapped for a symlink to a root-only
    file at once, and each temporary name root renamed away is planted again as such a
    symlink. Root never writes through one, and goes on writing the metrics."""
    textfile = owned_dir(public_dir / "textfile", second_user)
    prom = textfile / "lockfs.prom"
    mnt = make_mount(f"reclaim_delay=0.2,dir_grace=1,metrics_file={prom},metrics_interval=0.02")
    racer_args = (textfile, canary, str(RACER_ACTS), "60")
    racer = mnt.spawn(
        *as_user(second_user), sys.executable, HELPERS / "symlink_racer.py", *racer_args
    )
    assert racer.stdout.readline() == "watching\n", racer.stderr.read()
    out, err = racer.communicate(timeout=120)
    assert racer.returncode == 0, err
    assert_untouched(canary)
    counts = json.loads(out)
    assert counts["replaced"] >= RACER_ACTS, (counts, mnt.log_text())  # it did race
    # Root goes on writing the metrics file, a regular file again once the racer stopped.
    wait_for(lambda: metrics_in(prom), 10, "the metrics file, rewritten by root")
    assert_untouched(canary)
    assert "cannot write metrics" not in mnt.log_text()


def test_metrics_are_never_written_through_a_symlinked_directory(
    public_dir: Path,
    make_mount: MakeMount,
    second_user: pwd.struct_passwd,
    tmp_path: Path,
) -> None:
    """The metrics directory's parent belongs to the attacker too (as /var/lib/prometheus
    does): it swaps the directory for a symlink to a root-only directory. Root writes nothing
    there, says why once, and writes the metrics again once the real directory is back."""
    home = owned_dir(public_dir / "prometheus", second_user)
    textfile = owned_dir(home / "node-exporter", second_user)
    prom = textfile / "lockfs.prom"
    root_dir = tmp_path / "root-only"
    root_dir.mkdir(mode=0o700)
    mnt = make_mount(f"reclaim_delay=0.2,dir_grace=1,metrics_file={prom},metrics_interval=0.05")
    wait_for(lambda: metrics_in(prom), 10, "the metrics file")

    def as_owner(script: str) -> None:
        cmd = [*as_user(second_user), "sh", "-c", script]
        subprocess.run(cmd, cwd=home, check=True, timeout=30)

    as_owner(f"mv node-exporter node-exporter.real && ln -s {root_dir} node-exporter")
    wait_for(
        lambda: list(root_dir.iterdir()) or "cannot write metrics" in mnt.log_text(),
        10,
        "a metrics write attempt through the symlink",
    )
    assert list(root_dir.iterdir()) == []
    as_owner("rm node-exporter && mv node-exporter.real node-exporter")
    (textfile / "lockfs.prom").unlink()
    wait_for(lambda: metrics_in(prom), 10, "the metrics file, written again")
    log = mnt.log_text()
    assert log.count("cannot write metrics") == 1, log
    assert "symbolic link" in log and "metrics written again" in log, log


# --- The primitives (lockfs.rootfiles) ----------------------------------------------------------


def test_replace_file_replaces_a_planted_symlink_and_sets_the_mode(
    tmp_path: Path, canary: Path
) -> None:
    """A symlink at the file's name is replaced (rename never follows one), the mode is the one
    asked for whatever the umask, and no temporary file is left."""
    directory = tmp_path / "textfile"
    directory.mkdir()
    target = directory / "lockfs.prom"
    target.symlink_to(canary)
    old_umask = os.umask(0o077)
    try:
        rootfiles.replace_file(str(target), b"metrics\n", 0o644)
    finally:
        os.umask(old_umask)
    assert not target.is_symlink() and target.read_bytes() == b"metrics\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(directory) == ["lockfs.prom"]
    assert_untouched(canary)


def test_open_dir_refuses_a_symlink_anywhere_on_the_path(tmp_path: Path) -> None:
    real = tmp_path / "real" / "sub"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for path in (tmp_path / "link" / "sub", tmp_path / "link"):
        with pytest.raises(rootfiles.UnsafePath, match=f"^{tmp_path / 'link'} is a symbolic link"):
            rootfiles.open_dir(str(path))
    os.close(rootfiles.open_dir(str(real)))
    with pytest.raises(rootfiles.UnsafePath, match="symbolic link"):
        rootfiles.replace_file(str(tmp_path / "link" / "sub" / "lockfs.prom"), b"x", 0o644)
    assert os.listdir(real) == []


def test_private_dir_is_created_root_only(tmp_path: Path) -> None:
    path = tmp_path / "run"
    os.close(rootfiles.private_dir(str(path)))
    st = path.stat()
    assert stat.S_ISDIR(st.st_mode) and (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)
    os.close(rootfiles.private_dir(str(path)))  # and taken as it is the next time


def test_private_dir_refuses_what_others_could_change(
    tmp_path: Path, second_user: pwd.struct_passwd
) -> None:
    """A symlink, a directory of another user's, one that group or others may write: each
    refused in one line saying why."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    owned = tmp_path / "owned"
    owned.mkdir(mode=0o700)
    os.chown(owned, second_user.pw_uid, -1)
    group = tmp_path / "group"
    group.mkdir()
    group.chmod(0o770)
    cases = {
        "link": "is a symbolic link",
        "owned": f"it is owned by uid {second_user.pw_uid}, not root",
        "group": "group or others may write it (mode 0770)",
    }
    for name, reason in cases.items():
        with pytest.raises(rootfiles.UnsafePath) as info:
            rootfiles.private_dir(str(tmp_path / name))
        message = str(info.value)
        assert message.startswith(f"{tmp_path / name} ") and reason in message, message
        assert "\n" not in message


def test_the_daemon_refuses_to_start_when_its_run_dir_is_not_roots_alone(
    tmp_path: Path, second_user: pwd.struct_passwd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked before mounting: the mount command then fails with this one line (see
    lockfs.cli), instead of binding its control socket where another user could swap it."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    os.chown(run, second_user.pw_uid, -1)
    monkeypatch.setattr(control, "RUN_DIR", str(run))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    daemon = Daemon(str(mountpoint), MountOptions())
    with pytest.raises(rootfiles.UnsafePath, match="is not safe for lockfs's control sockets"):
        daemon.mount()
    assert not os.path.ismount(mountpoint)
