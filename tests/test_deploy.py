"""Deployment on a PBS host: the mount helper path, fstab, the systemd units, and lifecycle.

These tests install lockfs the way an administrator does (``mount/setup``: the Debian package
built from this checkout, installed with apt; ``lockfs`` in /usr/sbin) and then use only the
system's tools: ``mount -t fuse.lockfs`` (mount(8) -> /sbin/mount.fuse -> mount.fuse3 ->
``lockfs``), ``mount -T FSTAB``, ``umount`` and ``systemd-analyze verify``. Mountpoints live in
temporary directories and are unmounted in teardown (see the ``daemons`` fixture).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import pytest
from debian_package import COMMAND, Deb
from support import REPO, Daemons

from lockfs.control import escape_path
from lockfs.mounts import FSTYPE, entries_at, is_lockfs_mounted
from lockfs.options import parse_options

SYSTEMD = REPO / "systemd"
DOCS = REPO / "docs" / "deploying.md"
LOCKS = "/run/proxmox-backup/locks"
MOUNT_UNIT = SYSTEMD / (escape_path(LOCKS) + ".mount")
PBS_SERVICES = ("proxmox-backup.service", "proxmox-backup-proxy.service")
FSTAB_GENERATOR = Path("/lib/systemd/system-generators/systemd-fstab-generator")
BACKUP_ID = 34  # Debian's fixed uid/gid of `backup`
#: Unit settings that start another unit along (or require it): what an installed package
#: must not add to PBS's services before the administrator enables lockfs.
PULLING = {"Requires", "Wants", "BindsTo", "Requisite", "Upholds", "RequiresMountsFor", "PartOf"}


def read_unit(path: Path) -> dict[str, dict[str, str]]:
    """A unit file's settings; a setting given several times (lists such as Before=) has its
    values joined by spaces, as systemd joins them."""
    unit: dict[str, dict[str, str]] = {}
    section: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        section[key] = f"{section[key]} {value}" if key in section else value
    return unit


def docs_fstab_line() -> str:
    lines = [
        line
        for line in DOCS.read_text().splitlines()
        if line.startswith(f"lockfs {LOCKS} fuse.lockfs ")
    ]
    assert len(lines) == 1, "docs/deploying.md must show exactly one fstab line"
    return lines[0]


def mount_options(path: Path) -> set[str]:
    """The per-mount flags of the visible mount at ``path``."""
    return set(entries_at(path)[-1].options.split(","))


def assert_lockfs_serves(path: Path, uid: int, gid: int, mode: int) -> None:
    assert [e.fstype for e in entries_at(path)] == [FSTYPE]
    st = os.stat(path)
    assert st.st_ino == 1 and (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, mode)
    os.statvfs(path)  # a round trip to the daemon, never answered from a cache


@pytest.fixture(scope="session")
def systemd_analyze(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``systemd-analyze``, installed through ``mount/setup --dev --packages-only`` if needed;
    skips (with the reason) only where it cannot run at all."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        subprocess.run(
            [REPO / "mount" / "setup", "--dev", "--packages-only"],
            capture_output=True,
            timeout=1800,
        )
        tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip(
            "systemd-analyze is missing and `mount/setup --dev --packages-only` could not "
            "install it (Debian package systemd)"
        )
    probe = tmp_path_factory.mktemp("probe") / "lockfs-probe.service"
    probe.write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    result = subprocess.run([tool, "verify", probe], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run here: {result.stderr.strip()}")
    return tool


def verify(tool: str, *units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, "verify", *units], capture_output=True, text=True)


# --- Installation: where mount(8) and mount.fuse3 find things --------------------------------


def test_setup_puts_lockfs_where_mount_fuse3_finds_it(installed: Deb) -> None:
    # mount(8) drops PATH; mount.fuse3's /bin/sh then searches its default PATH.
    found = subprocess.run(
        ["env", "-i", "/bin/sh", "-c", "command -v lockfs"], capture_output=True, text=True
    )
    assert found.returncode == 0, "lockfs is not on /bin/sh's default PATH"
    assert found.stdout.strip() == str(COMMAND)
    # Nothing of an earlier /opt/lockfs install shadows it.
    for shadow in ("/usr/local/sbin/lockfs", "/usr/local/bin/lockfs", "/opt/lockfs"):
        assert not os.path.lexists(shadow), shadow
    version = subprocess.run([COMMAND, "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"lockfs {installed.version}"


def test_mount_falls_back_to_mount_fuse_without_a_lockfs_helper(installed: Deb) -> None:
    """mount(8) tries mount.fuse.lockfs, then mount.fuse: Debian's fuse3 provides the latter
    (a link to mount.fuse3), so the set-up adds no helper of its own."""
    assert not any(Path(d, "mount.fuse.lockfs").exists() for d in ("/sbin", "/usr/sbin"))
    assert Path("/sbin/mount.fuse").resolve().name == "mount.fuse3"


def test_setup_is_idempotent(installed: Deb) -> None:
    again = subprocess.run([REPO / "mount" / "setup"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"lockfs {installed.version} is installed" in again.stdout
    assert "runs /usr/sbin/mount.fuse3 -> /usr/sbin/lockfs" in again.stdout


def test_the_package_runs_on_debians_pyfuse3_and_trio(installed: Deb) -> None:
    """A host without a compiler: the packaged command on Debian's own python3-pyfuse3 and
    python3-trio, whatever newer versions a virtualenv elsewhere may have."""
    probe = "import pyfuse3, trio; print(pyfuse3.__file__); print(trio.__version__)"
    where, trio_version = subprocess.run(
        ["/usr/bin/python3", "-c", probe], capture_output=True, text=True, check=True, cwd="/"
    ).stdout.split()
    assert where.startswith("/usr/lib/python3/dist-packages/")
    debian = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "python3-trio"], capture_output=True, text=True
    )
    assert debian.stdout.startswith(trio_version), (trio_version, debian.stdout)
    shebang = COMMAND.read_text().splitlines()[0]
    assert shebang == "#!/usr/bin/python3"


# --- mount -t fuse.lockfs --------------------------------------------------------------------


@pytest.mark.parametrize("end", ["umount", "fusermount3", "SIGTERM"])
def test_mount_t_fuse_lockfs(installed: Deb, daemons: Daemons, end: str) -> None:
    path = daemons.mountpoint()
    options = "uid=backup,gid=backup,mode=0750,nosuid,nodev,noexec,nofail,_netdev,x-foo=1"
    result = daemons.run("mount", "-t", "fuse.lockfs", "lockfs", path, "-o", options)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    # mount returned only once the mount serves: no waiting here.
    assert_lockfs_serves(path, BACKUP_ID, BACKUP_ID, 0o750)
    assert {"nosuid", "nodev", "noexec"} <= mount_options(path)
    assert entries_at(path)[-1].source == "lockfs"
    pid = daemons.daemon_pid(path)
    with open(f"/proc/{pid}/cmdline") as cmdline:  # the installed copy, not this checkout
        assert cmdline.read().split("\0")[:2] == ["/usr/bin/python3", str(COMMAND)]
    (path / "store1").mkdir()
    locker = daemons.helper("pbs", path / "store1" / "vm-100", "--release")
    assert locker.wait(timeout=10) == 0
    daemons.end(path, pid, end)
    assert entries_at(path) == [] and os.listdir(path) == []


def test_readme_mount_command(installed: Deb, daemons: Daemons) -> None:
    """The README's first command, run from the repository root as the README says: it
    installs the package (set up already: idempotent), then mounts through mount(8). The
    checkout's ``lockfs/`` directory must not turn the source into a path."""
    path = daemons.mountpoint()
    command = REPO / "mount" / "lockfs-mount"
    result = daemons.run(command, path, "-o", "mode=0750", cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert f"lockfs {installed.version} mounted at {path}" in result.stdout
    assert_lockfs_serves(path, BACKUP_ID, BACKUP_ID, 0o750)
    assert {"nosuid", "nodev", "noexec"} <= mount_options(path)
    assert entries_at(path)[-1].source == "lockfs"
    findmnt = daemons.run("findmnt", "-n", "-o", "SOURCE,FSTYPE", path, cwd=REPO)
    assert findmnt.stdout.split() == ["lockfs", FSTYPE]
    pid = daemons.daemon_pid(path)
    with open(f"/proc/{pid}/cmdline") as cmdline:
        assert cmdline.read().split("\0")[1] == str(COMMAND)
    again = daemons.run(command, path, cwd=REPO)
    assert again.returncode == 0 and "already mounted" in again.stdout
    assert [e.fstype for e in entries_at(path)] == [FSTYPE]
    assert daemons.run("umount", path).returncode == 0
    assert daemons.wait_exit(pid) == 0


def test_fstab_line_from_the_docs(installed: Deb, daemons: Daemons) -> None:
    path = daemons.mountpoint("locks")
    line = docs_fstab_line().replace(f" {LOCKS} ", f" {path} ", 1)
    fstab = daemons.tmp_path / "fstab"
    fstab.write_text(f"# lockfs test\n{line}\n")
    result = daemons.run("mount", "-T", fstab, path)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert_lockfs_serves(path, BACKUP_ID, BACKUP_ID, 0o755)
    assert {"nosuid", "nodev", "noexec"} <= mount_options(path)
    pid = daemons.daemon_pid(path)
    # Mounting it again by its fstab entry is refused: it is mounted.
    again = daemons.run("mount", "-T", fstab, path)
    assert again.returncode != 0
    assert daemons.run("umount", path).returncode == 0
    assert daemons.wait_exit(pid) == 0


def test_mount_unit_the_way_systemd_mounts_it(installed: Deb, daemons: Daemons) -> None:
    """systemd runs ``mount WHAT WHERE -t TYPE -o OPTIONS`` and ``umount WHERE -c``."""
    section = read_unit(MOUNT_UNIT)["Mount"]
    run_dir = daemons.mountpoint("pbs")
    os.chown(run_dir, BACKUP_ID, BACKUP_ID)
    where = run_dir / "locks"
    where.mkdir()  # systemd creates Where= if it is missing
    result = daemons.run(
        "mount", section["What"], where, "-t", section["Type"], "-o", section["Options"]
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert_lockfs_serves(where, BACKUP_ID, BACKUP_ID, 0o755)
    daemons.track(where)
    pid = daemons.daemon_pid(where)
    locker = daemons.helper("pbs", where / "lock", "--release", "--uid", "34", "--gid", "34")
    assert locker.wait(timeout=10) == 0
    assert daemons.run("umount", where, "-c").returncode == 0
    assert daemons.wait_exit(pid) == 0


# --- Failures through the helper: loud, non-zero, and no mount left --------------------------


@pytest.mark.parametrize(
    ("make", "options", "message"),
    [
        (Daemons.missing_mountpoint, "rw", "does not exist"),
        (Daemons.non_empty_mountpoint, "rw", "is not empty"),
        (Daemons.mounted_mountpoint, "rw", "is already a lockfs mount"),
        (Daemons.dead_mountpoint, "rw", "is a dead lockfs mount"),
        (Daemons.mountpoint, "uid=backup,bogus", "unknown mount option: bogus"),
        (Daemons.mountpoint, "auto_unmount", "auto_unmount would unmount"),
        (Daemons.mountpoint, "uid=nosuchuser", "uid=nosuchuser"),
    ],
    ids=["missing", "not-empty", "mounted", "dead", "bad-option", "auto_unmount", "no-user"],
)
def test_mount_failures(
    installed: Deb, daemons: Daemons, make: object, options: str, message: str
) -> None:
    path = make(daemons)  # type: ignore[operator]
    before = entries_at(path)
    result = daemons.run("mount", "-t", "fuse.lockfs", "lockfs", path, "-o", options)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert entries_at(path) == before


def test_drop_privileges_is_refused(installed: Deb, daemons: Daemons) -> None:
    """mount.fuse3 mounts by itself for drop_privileges; lockfs refuses the descriptor, and
    the unchecked mount mount.fuse3 made is dead: plain umount removes it."""
    path = daemons.mountpoint()
    result = daemons.run("mount", "-t", "fuse.lockfs", "lockfs", path, "-o", "drop_privileges")
    assert result.returncode != 0
    assert "drop_privileges): not supported" in result.stderr
    if is_lockfs_mounted(path):
        with pytest.raises(OSError) as info:
            os.statvfs(path)
        assert info.value.errno == errno.ENOTCONN
        assert daemons.run("umount", path).returncode == 0
    assert entries_at(path) == []


# --- Lifecycle through the helper ------------------------------------------------------------


def test_stop_is_refused_while_a_lock_is_held(installed: Deb, daemons: Daemons) -> None:
    path = daemons.mountpoint()
    assert daemons.run("mount", "-t", "fuse.lockfs", "lockfs", path).returncode == 0
    pid = daemons.daemon_pid(path)
    holder = daemons.helper("pbs", path / "lock")
    assert holder.stdout is not None and holder.stdout.readline().startswith("locked ")
    # What `systemctl stop` runs (SIGTERM to the daemon: see test_cli.py):
    refused = daemons.run("umount", path, "-c")
    assert refused.returncode != 0 and "target is busy" in refused.stderr
    assert daemons.helper("pbs", path / "lock", "--release").wait(timeout=10) == 3  # busy
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)
    assert_lockfs_serves(path, 0, 0, 0o755)
    holder.communicate("\n", timeout=10)
    assert holder.returncode == 0
    assert daemons.run("umount", path, "-c").returncode == 0
    assert daemons.wait_exit(pid) == 0


def test_crash_leaves_enotconn_and_the_documented_recovery_works(
    installed: Deb, daemons: Daemons
) -> None:
    path = daemons.mountpoint()
    assert daemons.run("mount", "-t", "fuse.lockfs", "lockfs", path).returncode == 0
    pid = daemons.daemon_pid(path)
    holder = daemons.helper("pbs", path / "lock")
    assert holder.stdout is not None and holder.stdout.readline().startswith("locked ")
    os.kill(pid, signal.SIGKILL)
    assert daemons.wait_exit(pid) == -signal.SIGKILL
    # Fail closed: no empty directory, no second copy of the held lock.
    assert is_lockfs_mounted(path)
    with pytest.raises(OSError) as info:
        os.statvfs(path)
    assert info.value.errno == errno.ENOTCONN
    second = daemons.helper("pbs", path / "lock", "--release")
    _, err = second.communicate(timeout=10)
    assert second.returncode not in (0, 3) and "Transport endpoint is not connected" in err
    refused = daemons.run("mount", "-t", "fuse.lockfs", "lockfs", path)
    assert refused.returncode != 0 and "dead lockfs mount" in refused.stderr
    # The documented recovery: umount is refused while a holder is alive...
    busy = daemons.run("umount", path)
    assert busy.returncode != 0 and "target is busy" in busy.stderr
    # ...so stop the holders, then umount and mount again.
    holder.kill()
    holder.wait(timeout=10)
    assert daemons.run("umount", path).returncode == 0
    assert daemons.run("mount", "-t", "fuse.lockfs", "lockfs", path).returncode == 0
    assert_lockfs_serves(path, 0, 0, 0o755)
    pid = daemons.daemon_pid(path)
    assert daemons.run("umount", path).returncode == 0
    assert daemons.wait_exit(pid) == 0


# --- The systemd units -----------------------------------------------------------------------


def unit_files() -> list[Path]:
    return sorted(p for p in SYSTEMD.iterdir() if p.is_file())


def drop_ins() -> list[Path]:
    return sorted(SYSTEMD.glob("*.d/*.conf"))


def test_the_mount_unit_matches_its_path_and_orders_pbs() -> None:
    assert MOUNT_UNIT.name == "run-proxmox\\x2dbackup-locks.mount"
    unit = read_unit(MOUNT_UNIT)
    assert unit["Mount"]["Where"] == LOCKS
    assert (unit["Mount"]["What"], unit["Mount"]["Type"]) == ("lockfs", FSTYPE)
    assert "/run/proxmox-backup" in unit["Unit"]["RequiresMountsFor"].split()
    assert set(PBS_SERVICES) <= set(unit["Unit"]["Before"].split())
    opts = parse_options([unit["Mount"]["Options"]])
    assert (opts.uid, opts.gid, opts.mode) == (BACKUP_ID, BACKUP_ID, 0o755)
    assert {"nosuid", "nodev", "noexec"} <= set(opts.kernel_flags)
    # `systemctl enable` makes the PBS services require the mount (and nothing else).
    assert unit["Install"] == {"RequiredBy": " ".join(PBS_SERVICES)}
    for key in PULLING & set(unit["Unit"]):  # it never starts PBS itself
        assert not set(PBS_SERVICES) & set(unit["Unit"][key].split()), key
    # The drop-ins the package installs only order: installing enables nothing.
    for service in PBS_SERVICES:
        drop_in = read_unit(SYSTEMD / f"{service}.d" / "lockfs.conf")
        assert drop_in == {"Unit": {"After": MOUNT_UNIT.name}}


def test_systemd_analyze_verify_every_unit(systemd_analyze: str) -> None:
    units = unit_files()
    assert MOUNT_UNIT in units
    for unit in units:
        result = verify(systemd_analyze, unit)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), unit


def test_systemd_analyze_verify_drop_ins(systemd_analyze: str, tmp_path: Path) -> None:
    """The drop-ins on stand-ins of PBS's services (same [Service] type as PBS's units)."""
    for unit in unit_files():
        shutil.copy(unit, tmp_path)
    for service in PBS_SERVICES:
        (tmp_path / service).write_text(
            f"[Unit]\nDescription=stand-in for {service}\n\n"
            "[Service]\nType=notify\nExecStart=/bin/true\n\n"
            "[Install]\nWantedBy=multi-user.target\n"
        )
        shutil.copytree(SYSTEMD / f"{service}.d", tmp_path / f"{service}.d")
    assert {p.parent.name for p in drop_ins()} == {f"{s}.d" for s in PBS_SERVICES}
    services = [tmp_path / s for s in PBS_SERVICES]
    result = verify(systemd_analyze, *services)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    # Proof that verify reads drop-ins laid out like this: a bad one is reported.
    probe = tmp_path / f"{PBS_SERVICES[1]}.d" / "zz-probe.conf"
    probe.write_text("[Unit]\nNoSuchSetting=1\n")
    result = verify(systemd_analyze, services[1])
    assert "zz-probe.conf" in result.stderr and "NoSuchSetting" in result.stderr


def test_fstab_line_generates_an_equivalent_unit(systemd_analyze: str, tmp_path: Path) -> None:
    if not FSTAB_GENERATOR.exists():
        pytest.skip(f"{FSTAB_GENERATOR} is missing")
    fstab = tmp_path / "fstab"
    fstab.write_text(docs_fstab_line() + "\n")
    out = tmp_path / "generated"
    out.mkdir()
    env = {**os.environ, "SYSTEMD_FSTAB": str(fstab), "SYSTEMD_LOG_LEVEL": "err"}
    subprocess.run([FSTAB_GENERATOR, out, out, out], env=env, check=True, capture_output=True)
    generated = out / MOUNT_UNIT.name
    unit = read_unit(generated)
    assert (unit["Mount"]["What"], unit["Mount"]["Where"]) == ("lockfs", LOCKS)
    assert unit["Mount"]["Type"] == FSTYPE
    for service in PBS_SERVICES:  # x-systemd.required-by= and x-systemd.before=
        assert (out / f"{service}.requires" / MOUNT_UNIT.name).is_symlink()
        assert service in unit["Unit"]["Before"].split()
    result = verify(systemd_analyze, generated)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


# --- The docs ----------------------------------------------------------------------------------


def test_docs_section_and_files() -> None:
    text = DOCS.read_text()
    assert text.splitlines()[2] == "## Deploying on a PBS host"
    for name in [MOUNT_UNIT.name, *(f"{s}.d/lockfs.conf" for s in PBS_SERVICES)]:
        assert f"systemd/{name}" in text, name
    assert "systemctl restart 'run-proxmox\\x2dbackup-locks.mount'" in text
    assert "umount -l" in text and "ENOTCONN" in text
    # The switch-over never deletes the old directory blindly (it held move-journal).
    for doc in (text, (REPO / "README.md").read_text()):
        assert "lockfs switch-over /run/proxmox-backup/locks" in doc
        assert "rm -rf /run/proxmox-backup/locks" not in doc
    assert "](docs/deploying.md)" not in text  # no link to itself
