"""Data costs the daemon memory for the bytes written, not for the offsets (issue 16.3), on a
real mount: a write far into a file leaves a hole that reads as zeros."""

from __future__ import annotations

import os

from support import Mount

MIB = 1 << 20
#: The files written and the offset of their one byte: the last byte max_file_size allows.
FILES = 32
OFFSET = 64 * MIB - 1
#: What the 32 writes may add to the daemon's resident memory at most.
RSS_ALLOWANCE = 8 * MIB


def daemon_rss(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_one_byte_writes_at_the_end_stay_sparse(mnt: Mount) -> None:
    """32 one-byte pwrites at 64 MiB - 1 (max_file_size is 64M) grow the daemon's RSS by a
    few MiB at most (the old zero-filled bytearray: 2 GiB), and each file reads back as
    64 MiB - 1 zeros and the byte, with st_blocks counting what is stored, not the size."""
    pid = mnt.status().pid
    paths = [mnt / f"sparse-{i}" for i in range(FILES)]
    # Warm up the request paths (open, write, getattr) before the baseline.
    warm = mnt / "warm"
    warm.write_bytes(b"w")
    os.stat(warm)
    before = daemon_rss(pid)
    for i, path in enumerate(paths):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            assert os.pwrite(fd, bytes([i + 1]), OFFSET) == 1
        finally:
            os.close(fd)
    grown = daemon_rss(pid) - before
    assert grown <= RSS_ALLOWANCE, f"daemon RSS grew by {grown / MIB:.1f} MiB"
    for i, path in enumerate(paths):
        st = os.stat(path)
        assert st.st_size == OFFSET + 1
        assert st.st_blocks * 512 <= 4096, st.st_blocks
        with open(path, "rb") as file:
            assert file.read(4) == b"\0\0\0\0"
            file.seek(OFFSET - 3)
            assert file.read() == b"\0\0\0" + bytes([i + 1])
    with open(paths[0], "rb", buffering=0) as file:
        content = file.read()
    assert len(content) == OFFSET + 1
    assert content.count(0) == OFFSET and content[-1] == 1
