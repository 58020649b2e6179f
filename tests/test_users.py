"""A second user on the mount: the kernel enforces mode bits (default_permissions, allow_other)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import textwrap

from support import MakeMount, as_user

PROBE = textwrap.dedent(
    """
    import errno, fcntl, json, os, sys
    root = sys.argv[1]
    results = {}
    def attempt(name, fn, *args):
        try:
            fn(*args)
            results[name] = 0
        except OSError as exc:
            results[name] = errno.errorcode[exc.errno]
    def lock(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        results["own_uid"] = os.fstat(fd).st_uid
        os.close(fd)
    attempt("lock_in_sticky_root", lock, f"{root}/mine")
    attempt("mkdir_in_sticky_root", os.mkdir, f"{root}/mydir")
    attempt("read_private", lambda: open(f"{root}/private").read())
    attempt("unlink_private", os.unlink, f"{root}/private")
    attempt("chmod_private", os.chmod, f"{root}/private", 0o666)
    attempt("chown_own_dir", os.chown, f"{root}/mydir", 0, 0)
    attempt("create_in_backup_dir", lock, f"{root}/backup/x")
    attempt("mkdir_in_backup_dir", os.mkdir, f"{root}/backup/y")
    attempt("rename_in_backup_dir", os.rename, f"{root}/backup/data", f"{root}/backup/z")
    attempt("open_group_file_rw", os.open, f"{root}/backup/data", os.O_RDWR)
    print(json.dumps(results))
    """
)


def run_as(
    user: pwd.struct_passwd, *cmd: str | os.PathLike[str]
) -> subprocess.CompletedProcess[str]:
    argv = [*as_user(user), *map(str, cmd)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_second_user_is_confined_by_mode_bits(
    make_mount: MakeMount, second_user: pwd.struct_passwd
) -> None:
    mnt = make_mount("mode=1777,reclaim_delay=0.2,dir_grace=1", public=True)
    private = mnt / "private"
    private.write_bytes(b"secret")  # holds data, so it stays
    os.chmod(private, 0o600)
    (mnt / "backup").mkdir(mode=0o755)
    os.chown(mnt / "backup", 34, 34)
    (mnt / "backup/data").write_bytes(b"x")
    os.chown(mnt / "backup/data", 34, 34)
    os.chmod(mnt / "backup/data", 0o640)

    result = run_as(second_user, sys.executable, "-c", PROBE, mnt)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got == {
        "lock_in_sticky_root": 0,
        "own_uid": second_user.pw_uid,
        "mkdir_in_sticky_root": 0,
        "read_private": "EACCES",
        "unlink_private": "EPERM",  # sticky root: only the owner may remove it
        "chmod_private": "EPERM",
        "chown_own_dir": "EPERM",
        "create_in_backup_dir": "EACCES",
        "mkdir_in_backup_dir": "EACCES",
        "rename_in_backup_dir": "EACCES",
        "open_group_file_rw": "EACCES",
    }
    assert private.read_bytes() == b"secret"
    assert os.stat(mnt / "mydir").st_uid == second_user.pw_uid


def test_root_directory_options_set_owner_and_mode(make_mount: MakeMount) -> None:
    mnt = make_mount("uid=34,gid=34,mode=0750")
    st = os.stat(mnt.path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (34, 34, 0o750)
