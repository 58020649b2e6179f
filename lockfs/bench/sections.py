"""What the bench measures: the hot, cold, memory, held and listing sections."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import reference, rounds, workers
from .machine import (
    KEY_CACHES,
    count_tree,
    lock_owner,
    remove_contents,
    rss_peak,
    slab_caches,
    slab_growth,
    slab_reading,
)
from .progress import progress
from .runs import (
    RUN_RATIO_KEYS,
    daemon_figures,
    holding,
    listing,
    ratios,
    split_range,
    timed_run,
)
from .targets import Target, snapshot, table_state

SECTIONS = ("hot", "cold", "memory", "held", "listing")


@dataclass(frozen=True)
class Sizes:
    """How much work each section does."""

    hot_cycles: int
    cold_cycles: int
    memory_locks: int
    held_locks: int
    #: Entries of the directory the listing section's listers list.
    listing_entries: int = 65_536


PRESETS = {
    "quick": Sizes(
        hot_cycles=300, cold_cycles=200, memory_locks=500, held_locks=200, listing_entries=4096
    ),
    "default": Sizes(hot_cycles=20_000, cold_cycles=5_000, memory_locks=20_000, held_locks=10_000),
    "full": Sizes(
        hot_cycles=100_000, cold_cycles=20_000, memory_locks=1_000_000, held_locks=100_000
    ),
}
#: Locks held in the reference case of the held section.
FEW_HELD = 10
#: Processes listing the big directory in the listing section.
LISTERS = 2


@dataclass
class Bench:
    """Everything a section needs: the two targets, sizes and options."""

    tmpfs: Target
    lockfs: Target
    sizes: Sizes
    procs: int
    held_procs: int
    drop: bool
    owner: tuple[int, int] = field(default_factory=lock_owner)
    next_index: int = 0
    #: Reference servers measured beside tmpfs and lockfs in the hot and cold sections.
    references: list[Target] = field(default_factory=list)
    #: Rounds the hot and cold runs are cut into, the targets taking turns (bench.rounds).
    rounds: int = 1

    @property
    def targets(self) -> tuple[Target, Target]:
        return self.tmpfs, self.lockfs

    @property
    def run_targets(self) -> tuple[Target, ...]:
        """Targets of the hot and cold sections: tmpfs, the reference servers, lockfs."""
        return self.tmpfs, *self.references, self.lockfs

    @property
    def proc_counts(self) -> list[int]:
        return sorted({1, self.procs})

    def allocate(self, count: int) -> range:
        """Chunk numbers never used before in this run, so every cold path is fresh."""
        out = range(self.next_index, self.next_index + count)
        self.next_index += count
        return out

    def hot_jobs(self, path: str, cycles: int, procs: int) -> list[dict[str, Any]]:
        return [{"path": path, "cycles": len(r)} for r in split_range(range(cycles), procs)]

    def cold_jobs(self, target: Target, indices: range, procs: int) -> list[dict[str, Any]]:
        uid, gid = self.owner
        return [
            {"root": target.root, "indices": r, "uid": uid, "gid": gid}
            for r in split_range(indices, procs)
        ]

    def hot_run(self, target: Target, path: str, cycles: int, procs: int) -> dict[str, Any]:
        """Hot cycles on ``path``; the file exists and is cached before the clock starts."""

        def prewarm() -> None:
            workers.create_dir_all(os.path.dirname(path))
            workers.hot_cycle(path)

        return timed_run(target, "hot", self.hot_jobs(path, cycles, procs), prewarm=prewarm)


def in_rounds(
    bench: Bench, label: str, run_part: Callable[[Target, int], dict[str, Any]], *, settle: bool
) -> dict[str, dict[str, Any]]:
    """One run per target of the hot and cold sections, cut into ``bench.rounds`` parts that
    the targets take in turns (bench.rounds); ``run_part(target, part)`` measures one part.

    With ``settle``, every target first finishes what an earlier run left, and the figures
    ``with_reclaim`` go from the start of its first part until its reclaim has finished
    (including the daemon's idle time while the other targets run their parts).
    """
    targets = bench.run_targets
    if settle:
        for target in targets:
            target.settle()
    start = {target.name: snapshot(target, cpu_first=False) for target in targets}
    parts: dict[str, list[dict[str, Any]]] = {target.name: [] for target in targets}
    progress(f"{label}, {bench.rounds} rounds: {', '.join(t.name for t in targets)}")
    for part, target in rounds.turns(targets, bench.rounds):
        parts[target.name].append(run_part(target, part))
    out = {}
    for target in targets:
        figures = rounds.combine(parts[target.name])
        before = start[target.name]
        if settle:
            settled = target.settle()
            final = snapshot(target, cpu_first=True)
            if before is not None and final is not None:
                figures["settled"] = settled["settled"]
                figures["reclaim_s"] = settled["reclaim_s"]
                figures["with_reclaim"] = daemon_figures(before, final, figures["cycles"])
                figures["table_after_reclaim"] = table_state(final.status)
        out[target.name] = figures
    return out


#: One part of a run in rounds: ``(target, part index, processes) -> figures``.
PartRunner = Callable[[Target, int, int], dict[str, Any]]


def _runs_in_rounds(
    bench: Bench, what: str, cycles: int, run_part: PartRunner, *, settle: bool
) -> list[dict[str, Any]]:
    """One run of ``cycles`` per process count, each cut into rounds that the targets take in
    turns, with its ratios against tmpfs and the reference servers."""
    runs = []
    for procs in bench.proc_counts:
        run: dict[str, Any] = {"procs": procs, "cycles": cycles}
        label = f"{what}: {cycles:,} cycles, {procs} processes"
        run.update(
            in_rounds(
                bench,
                label,
                lambda target, part: run_part(target, part, procs),  # noqa: B023
                settle=settle,
            )
        )
        run["ratio"] = ratios(run["tmpfs"], run["lockfs"], RUN_RATIO_KEYS)
        run.update(reference.reference_ratios(run))
        runs.append(run)
    return runs


def section_hot(bench: Bench) -> dict[str, Any]:
    """Hot cycles on one path, 1 and N processes, on every target in turns."""
    cycles = bench.sizes.hot_cycles
    shares = split_range(range(cycles), bench.rounds)

    def hot_part(target: Target, part: int, procs: int) -> dict[str, Any]:
        path = os.path.join(target.root, "hot", "vm-100.lck")
        return bench.hot_run(target, path, len(shares[part]), procs)

    return {"cycles": cycles, "runs": _runs_in_rounds(bench, "hot", cycles, hot_part, settle=False)}


def section_cold(bench: Bench) -> dict[str, Any]:
    """PBS's sequence on fresh chunk paths, 1 and N processes, on every target in turns;
    reclaim waited for."""
    cycles = bench.sizes.cold_cycles
    shares_of_run: dict[int, list[range]] = {}

    def cold_part(target: Target, part: int, procs: int) -> dict[str, Any]:
        if procs not in shares_of_run:  # fresh chunk paths for every run
            shares_of_run[procs] = split_range(bench.allocate(cycles), bench.rounds)
        return timed_run(target, "cold", bench.cold_jobs(target, shares_of_run[procs][part], procs))

    runs = _runs_in_rounds(bench, "cold", cycles, cold_part, settle=True)
    return {"cycles": cycles, "runs": runs}


def memory_lockfs(bench: Bench, indices: range) -> dict[str, Any]:
    """N cold locks on lockfs: table, RSS and slab before, at the end, after reclaim."""
    target = bench.lockfs
    target.settle()
    before = table_state(target.status())
    slab0 = slab_reading(bench.drop)
    at_end: dict[str, Any] = {}

    def read_caches(result: dict[str, Any]) -> None:
        at_end.update(slab_caches())

    jobs = bench.cold_jobs(target, indices, bench.procs)
    run = timed_run(target, "cold", jobs, settle=True, on_done=read_caches)
    slab1 = slab_reading(bench.drop)
    files, dirs = count_tree(target.root)  # after reclaim: listing makes lookups
    after = run.get("table_after_reclaim", {})
    assert target.daemon_pid is not None
    return {
        "run": run,
        # Kernel objects the mount pins at the end of the run (no caches dropped).
        "objects_at_end_of_run": {
            name: at_end.get(name, (0, 0))[0] - slab0["caches"].get(name, (0, 0))[0]
            for name in KEY_CACHES
        },
        "rss_peak_bytes": rss_peak(target.daemon_pid),
        "files_left": files,
        "dirs_left": dirs,
        "slab_growth": slab_growth(slab0, slab1),
        "drop_caches": slab1["dropped"],
        "table_before": before,
        "table_after_run": run.get("table_after_run"),
        "table_after_reclaim": after,
        "rss_before_bytes": before["rss_bytes"],
        "rss_after_run_bytes": run.get("table_after_run", {}).get("rss_bytes"),
        "rss_after_bytes": after.get("rss_bytes"),
        "rss_growth_bytes": after.get("rss_bytes", 0) - before["rss_bytes"],
        "reclaim_s": run.get("reclaim_s"),
        "settled": run.get("settled"),
    }


def memory_tmpfs(bench: Bench, indices: range) -> dict[str, Any]:
    """N cold locks on tmpfs: files and slab they leave, and slab after deleting them."""
    target = bench.tmpfs
    remove_contents(target.root)
    slab0 = slab_reading(bench.drop)
    run = timed_run(target, "cold", bench.cold_jobs(target, indices, bench.procs))
    slab1 = slab_reading(bench.drop)
    files, dirs = count_tree(target.root)
    remove_contents(target.root)
    slab2 = slab_reading(bench.drop)
    return {
        "run": run,
        "files_left": files,
        "dirs_left": dirs,
        "slab_growth": slab_growth(slab0, slab1),
        "slab_growth_after_cleanup": slab_growth(slab0, slab2),
        "drop_caches": slab1["dropped"],
    }


def section_memory(bench: Bench) -> dict[str, Any]:
    """What N distinct cold locks leave behind on each filesystem."""
    count = bench.sizes.memory_locks
    indices = bench.allocate(count)
    progress(f"memory: {count:,} cold locks, {bench.procs} processes, lockfs (then reclaim)")
    lockfs = memory_lockfs(bench, indices)
    progress(f"memory: {count:,} cold locks, {bench.procs} processes, tmpfs")
    tmpfs = memory_tmpfs(bench, indices)
    for result in (tmpfs, lockfs):
        growth = result["slab_growth"]
        result["slab_bytes_per_lock"] = growth["slab_kb"] * 1024 / count
        result["sunreclaim_bytes_per_lock"] = growth["sunreclaim_kb"] * 1024 / count
    return {"locks": count, "procs": bench.procs, "tmpfs": tmpfs, "lockfs": lockfs}


def holder_procs(count: int, procs: int) -> int:
    """Processes needed to hold ``count`` locks: ``procs``, or more if RLIMIT_NOFILE's hard
    limit is too low for that and cannot be raised (no CAP_SYS_RESOURCE, as in containers)."""
    needed = -(-count // procs) + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= needed:
        return procs
    try:  # the holders inherit the hard limit and raise their soft limit to their share
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, needed))
    except (ValueError, OSError):
        more = -(-count // (hard - 64))
        progress(f"held: RLIMIT_NOFILE hard limit {hard} cannot be raised: using {more} processes")
        return more
    return procs


def held_target(bench: Bench, target: Target, count: int) -> dict[str, Any]:
    """Hot cycles on another path with FEW_HELD held, then with ``count`` held."""
    cycles = bench.sizes.hot_cycles
    probe = os.path.join(target.root, "probe", "vm-200.lck")
    out: dict[str, Any] = {}
    for label, held in (("few", FEW_HELD), ("many", count)):
        procs = holder_procs(held, bench.held_procs)
        progress(f"held: {held:,} locks in {procs} processes, {target.name}")
        first = 0 if label == "few" else FEW_HELD
        with holding(target, first, held, procs) as info:
            if target.is_lockfs:
                info["table_while_held"] = table_state(target.status())
            info["hot"] = bench.hot_run(target, probe, cycles, 1)
        out[label] = info
    out["cost_ratio"] = out["many"]["hot"]["us_per_cycle"] / out["few"]["hot"]["us_per_cycle"]
    progress(f"held: releasing, {target.name}")
    settled = target.settle()
    if target.is_lockfs:
        out["reclaim_s"] = settled.get("reclaim_s")
        out["table_after_reclaim"] = table_state(settled["status"])
    return out


def section_held(bench: Bench) -> dict[str, Any]:
    """The held-locks section on both targets."""
    count = bench.sizes.held_locks
    out: dict[str, Any] = {"held": count, "few": FEW_HELD}
    for target in bench.targets:
        out[target.name] = held_target(bench, target, count)
    out["procs"] = out["lockfs"]["many"]["procs"]
    out["ratio"] = {
        "few_us_per_cycle": out["lockfs"]["few"]["hot"]["us_per_cycle"]
        / out["tmpfs"]["few"]["hot"]["us_per_cycle"],
        "many_us_per_cycle": out["lockfs"]["many"]["hot"]["us_per_cycle"]
        / out["tmpfs"]["many"]["hot"]["us_per_cycle"],
    }
    return out


def section_listing(bench: Bench) -> dict[str, Any]:
    """Hot lock cycles on lockfs by 1 and 2 processes, alone and while LISTERS processes list
    a directory of ``listing_entries`` held lock files in a loop: what listing costs everyone
    else (goal: at least half the throughput). Alone and while listing take turns in
    ``bench.rounds`` rounds (bench.rounds), so both see the same machine."""
    target = bench.lockfs
    count = bench.sizes.listing_entries
    cycles = bench.sizes.hot_cycles
    probe = os.path.join(target.root, "probe", "vm-300.lck")
    root = os.path.join(target.root, "listing")
    directory = os.path.dirname(workers.held_path(root, 0, count))  # all in one directory
    out: dict[str, Any] = {"entries": count, "listers": LISTERS, "cycles": cycles, "runs": []}
    holders = holder_procs(count, 1)
    progress(f"listing: holding {count:,} lock files in one directory ({holders} processes)")
    with holding(target, 0, count, holders, root=root, per_dir=count):
        for procs in sorted({1, min(2, bench.procs)}):
            progress(
                f"listing: {cycles:,} hot cycles, {procs} processes, alone and while "
                f"{LISTERS} processes list {count:,} entries, {bench.rounds} rounds"
            )
            shares = split_range(range(cycles), bench.rounds)
            parts: dict[str, list[dict[str, Any]]] = {"alone": [], "listing": []}
            listed: list[dict[str, Any]] = []
            for part, mode in rounds.turns(["alone", "listing"], bench.rounds):
                if mode == "alone":
                    parts[mode].append(bench.hot_run(target, probe, len(shares[part]), procs))
                    continue
                with listing(directory, LISTERS) as listers:
                    parts[mode].append(bench.hot_run(target, probe, len(shares[part]), procs))
                listed.append(listers)
            alone, busy = rounds.combine(parts["alone"]), rounds.combine(parts["listing"])
            wall = sum(x["wall_s"] for x in listed)
            out["runs"].append(
                {
                    "procs": procs,
                    "alone": alone,
                    "listing": busy,
                    "listings_per_s": sum(x["listings"] for x in listed) / wall,
                    "entries_per_s": sum(x["entries"] for x in listed) / wall,
                    "ratio": busy["cycles_per_s"] / alone["cycles_per_s"],
                }
            )
    progress("listing: releasing")
    target.settle()
    return out


SECTION_FUNCS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "hot": section_hot,
    "cold": section_cold,
    "memory": section_memory,
    "held": section_held,
    "listing": section_listing,
}
