"""Smoke test of the benchmark command: it runs, cleans up and reports sane numbers.

No timing assertions: the machine may be busy. Only that every section ran on both
filesystems and that the figures are consistent with what a lock cycle must cost.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO, daemon_env


def bench_mounts(stderr: str) -> list[str]:
    """Mounts left below the temporary directory of the bench run whose log is ``stderr`` (its
    tmpfs, lockfs and reference servers; other bench runs may be going on meanwhile)."""
    found = re.search(r"starting lockfs .* at (/\S+/)lockfs\n", stderr)
    assert found, f"no lockfs start in the bench's log:\n{stderr}"
    with open("/proc/mounts") as f:
        return [line for line in f if line.split()[1].startswith(found[1])]


def test_quick_run_reports_every_section(tmp_path: Path, fuse_required: None) -> None:
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lockfs.bench", "--quick", "--json", str(out)],
        cwd=REPO,
        env=daemon_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout}\n{proc.stderr}"
    assert bench_mounts(proc.stderr) == [], "the bench left a mount behind"
    assert "lockfs/tmpfs" in proc.stdout and "FUSE requests per cycle by type" in proc.stdout
    assert "lockfs/minimal" in proc.stdout and "(minimal server)" in proc.stdout

    results = json.loads(out.read_text())
    assert results["errors"] == {}
    assert {"meta", "config", "hot", "cold", "memory", "held", "listing"} <= results.keys()
    listing = results["listing"]
    assert listing["entries"] == 4096 and listing["listers"] == 2
    assert [run["procs"] for run in listing["runs"]] == [1, 2]
    for run in listing["runs"]:
        assert run["alone"]["cycles"] == run["listing"]["cycles"] == listing["cycles"] > 0
        assert run["ratio"] > 0 and run["entries_per_s"] > 0
    assert "Listing: hot cycles while 2 processes list" in proc.stdout

    # The C server is there when gcc and libfuse3's headers are (mount/setup --dev installs them).
    references = results["config"]["references"]
    assert references in (["libfuse", "minimal"], ["minimal"])
    for section in ("hot", "cold"):
        runs = results[section]["runs"]
        assert runs and runs[0]["procs"] == 1
        for run in runs:
            for fs in ("tmpfs", *references, "lockfs"):
                assert run[fs]["cycles"] == run["cycles"] > 0
                assert run[fs]["cycles_per_s"] > 0 and run[fs]["us_per_cycle"] > 0
                assert run[fs]["rounds"] == results["config"]["rounds"] == 2
            assert run["ratio"]["us_per_cycle"] > 0
            # The reference servers see the same requests as lockfs, minus lockfs's FORGETs.
            lockfs = run["lockfs"].get("with_reclaim", run["lockfs"])["requests_per_cycle"]
            for reference in references:
                assert run[f"ratio_{reference}"]["cycles_per_s"] > 0
                counted = run[reference]["requests_per_cycle"]
                for name in (set(lockfs) | set(counted)) - {"forget"}:
                    # GETATTRs of a directory depend a little on timing: the kernel drops its
                    # attributes whenever an entry in it changes.
                    assert lockfs.get(name, 0) == pytest.approx(counted.get(name, 0), abs=0.5), (
                        reference,
                        name,
                    )

    # A hot cycle on a cached, existing file is one OPEN and one RELEASE.
    hot = results["hot"]["runs"][0]["lockfs"]
    assert hot["requests_per_cycle"]["open"] == 1.0
    assert hot["requests_per_cycle"]["release"] == 1.0
    assert hot["daemon_cpu_s"] >= 0

    # A cold cycle creates exactly one file, renames it once and is reclaimed afterwards.
    cold = results["cold"]["runs"][0]["lockfs"]
    assert cold["settled"] is True
    per_cycle = cold["with_reclaim"]["requests_per_cycle"]
    assert per_cycle["create"] == 1.0 and per_cycle["rename"] == 1.0
    assert cold["with_reclaim"]["reclaimed_per_cycle"] >= 1.0

    memory = results["memory"]
    locks = memory["locks"]
    assert memory["tmpfs"]["files_left"] == locks
    assert memory["lockfs"]["files_left"] == 0 and memory["lockfs"]["dirs_left"] == 0
    assert memory["lockfs"]["table_after_reclaim"]["nodes"] == 1
    assert memory["lockfs"]["rss_after_bytes"] > 0

    held = results["held"]
    for fs in ("tmpfs", "lockfs"):
        assert held[fs]["many"]["held"] == held["held"] > held["few"]
        assert held[fs]["cost_ratio"] > 0
    assert held["lockfs"]["many"]["table_while_held"]["open"] >= held["held"]
    assert held["lockfs"]["table_after_reclaim"]["nodes"] == 1
