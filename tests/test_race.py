"""Many processes racing for a few names with PBS's sequence, plain flock and unlink-before-unlock.

Zero overlaps of exclusive holders and zero lost journal lines, on a mount whose reclaim runs
constantly underneath (a very short reclaim delay makes idle names vanish between cycles), with
the hang watchdog at its shortest setting (it must never trip on a busy daemon).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from support import HELPERS, MakeMount

from lockfs.options import MIN_HANG_TIMEOUT

WORKERS = ["pbs", "pbs", "guard", "guard", "plain", "plain"]
SECONDS = "4"


def test_race_has_no_overlaps_and_loses_no_journal_lines(
    make_mount: MakeMount, tmp_path: Path
) -> None:
    mnt = make_mount(f"reclaim_delay=0.01,dir_grace=0.05,hang_timeout={MIN_HANG_TIMEOUT}")
    markers = tmp_path / "markers"
    markers.mkdir()
    procs = [
        mnt.spawn(sys.executable, HELPERS / "race.py", strategy, mnt, markers, SECONDS, str(seed))
        for seed, strategy in enumerate(WORKERS)
    ]
    totals: dict[str, int] = {}
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        for key, value in json.loads(out).items():
            totals[key] = totals.get(key, 0) + value
    assert totals["overlaps"] == 0, totals
    assert totals["cycles"] > 100, totals  # the race really ran
    journal = mnt / "store/move-journal"
    left = journal.read_bytes().splitlines() if journal.exists() else []
    assert len(left) == len(set(left))
    assert totals["consumed"] + len(left) == totals["appended"], totals
    if left:
        journal.write_bytes(b"")
    status = mnt.wait_reclaimed(15)
    assert status.open == 0
    assert mnt.proc.poll() is None and "daemon hung" not in mnt.log_text()
