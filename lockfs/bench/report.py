"""The tables printed at the end of a run, and the JSON file."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from . import reference
from .machine import KEY_CACHES

#: Request types always printed (a lock cycle may send them); others only when counted.
ALWAYS_SHOWN = {"lookup", "forget", "getattr", "setattr", "mkdir", "create", "open", "flush"}
ALWAYS_SHOWN |= {"release", "rename"}
#: Request types in the order they are printed; others follow alphabetically.
REQUEST_ORDER = (
    "lookup", "forget", "getattr", "setattr", "mkdir", "mknod", "create", "open", "flush",
    "release", "rename", "link", "unlink", "rmdir", "read", "write", "fsync", "opendir",
    "readdir", "releasedir", "statfs",
)  # fmt: skip


def fmt(value: Any) -> str:
    """A number for a table: thousands separators, about three significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.1f}"
        if value == 0:
            return "0"
        if magnitude >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value)


def render_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [list(header)] + [[str(r[0]), *(fmt(v) for v in r[1:])] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [title]
    for n, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  " + "  ".join(parts).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


RUN_HEADER = ("", "tmpfs", "lockfs", "lockfs/tmpfs")


def run_header(run: dict[str, Any]) -> tuple[str, ...]:
    """Columns of a run's table: tmpfs, reference servers, lockfs, then lockfs's ratios."""
    refs = reference.columns_of(run)
    return ("", "tmpfs", *refs, "lockfs", "lockfs/tmpfs", *(f"lockfs/{name}" for name in refs))


def run_rows(run: dict[str, Any], *, cold: bool) -> list[list[Any]]:
    """Rows of one set of timed runs: tmpfs, the reference servers (if any) and lockfs."""
    t, lf, r = run["tmpfs"], run["lockfs"], run["ratio"]
    reclaim = lf.get("with_reclaim", lf)
    refs = [reference.daemon_view(run[n]) for n in reference.columns_of(run)]
    ref_ratios = [run[f"ratio_{n}"] for n in reference.columns_of(run)]
    suffix = " (incl. reclaim)" if cold else ""

    def row(label: str, key: str, tmpfs: Any, lockfs: Any, ratio: Any) -> list[Any]:
        return [
            label,
            tmpfs,
            *(ref.get(key) for ref in refs),
            lockfs,
            ratio,
            *(ratios.get(key) for ratios in ref_ratios),
        ]

    def both(label: str, key: str) -> list[Any]:
        return row(label, key, t[key], lf[key], r.get(key))

    return [
        both("µs per cycle (wall / cycles)", "us_per_cycle"),
        both("µs per cycle, per process", "latency_us"),
        both("cycles/s", "cycles_per_s"),
        row("client CPU µs/cycle", "client_cpu_us_per_cycle", t["client_cpu_us_per_cycle"],
            lf["client_cpu_us_per_cycle"], None),
        row("daemon CPU µs/cycle" + suffix, "daemon_cpu_us_per_cycle", None,
            reclaim["daemon_cpu_us_per_cycle"], None),
        both("total CPU µs/cycle", "total_cpu_us_per_cycle"),
        row("FUSE requests/cycle" + suffix, "requests_total_per_cycle", None,
            reclaim["requests_total_per_cycle"], None),
        row("daemon CPU µs/request" + suffix, "daemon_cpu_us_per_request", None,
            reclaim["daemon_cpu_us_per_request"], None),
    ]  # fmt: skip


def render_runs(title: str, section: dict[str, Any], *, cold: bool) -> str:
    blocks = []
    for run in section["runs"]:
        blocks.append(
            render_table(
                f"{title}: {run['cycles']:,} cycles, {run['procs']} process(es)",
                run_header(run),
                run_rows(run, cold=cold),
            )
        )
    return "\n\n".join(blocks)


def request_columns(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, lockfs daemon figures) for every lockfs measurement of the run."""
    cols = []
    for run in results.get("hot", {}).get("runs", []):
        cols.append((f"hot {run['procs']}p", run["lockfs"]))
    for run in results.get("cold", {}).get("runs", []):
        cols.append((f"cold {run['procs']}p", run["lockfs"].get("with_reclaim", run["lockfs"])))
    memory = results.get("memory")
    if memory:
        run = memory["lockfs"]["run"]
        cols.append((f"cold N={memory['locks']:,}", run.get("with_reclaim", run)))
    held = results.get("held")
    if held:
        cols.append((f"hot, {held['few']} held", held["lockfs"]["few"]["hot"]))
        cols.append((f"hot, {held['held']:,} held", held["lockfs"]["many"]["hot"]))
    return cols


def render_requests(results: dict[str, Any]) -> str:
    """FUSE requests per cycle by type, one column per lockfs measurement."""
    return render_request_table(
        "FUSE requests per cycle by type (lockfs; cold columns include reclaim and FORGET)",
        request_columns(results),
    )


def render_request_table(title: str, cols: list[tuple[str, dict[str, Any]]]) -> str:
    """Requests per cycle by type, total, daemon CPU per cycle and per request; one column
    per measurement."""
    if not cols:
        return ""
    seen = {name for _, figures in cols for name in figures.get("requests_per_cycle", {})}
    seen |= ALWAYS_SHOWN
    names = [n for n in REQUEST_ORDER if n in seen] + sorted(seen - set(REQUEST_ORDER))
    rows: list[list[Any]] = [
        [name, *(figures.get("requests_per_cycle", {}).get(name, 0.0) for _, figures in cols)]
        for name in names
    ]
    rows.append(["total", *(f.get("requests_total_per_cycle") for _, f in cols)])
    rows.append(["daemon CPU µs/cycle", *(f.get("daemon_cpu_us_per_cycle") for _, f in cols)])
    rows.append(["daemon CPU µs/request", *(f.get("daemon_cpu_us_per_request") for _, f in cols)])
    return render_table(title, ["request", *(label for label, _ in cols)], rows)


def mib(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def render_memory(memory: dict[str, Any]) -> str:
    t, lf = memory["tmpfs"], memory["lockfs"]
    tb, la, lr = lf["table_before"], lf["table_after_run"] or {}, lf["table_after_reclaim"] or {}
    tg, lg, tc = t["slab_growth"], lf["slab_growth"], t["slab_growth_after_cleanup"]
    rows = [
        ["files left", t["files_left"], lf["files_left"]],
        ["directories left", t["dirs_left"], lf["dirs_left"]],
        ["Slab growth (KiB)", tg["slab_kb"], lg["slab_kb"]],
        ["SUnreclaim growth (KiB)", tg["sunreclaim_kb"], lg["sunreclaim_kb"]],
        ["Slab growth per lock (bytes)", t["slab_bytes_per_lock"], lf["slab_bytes_per_lock"]],
        *(
            [f"{name} objects growth", tg["objects"][name], lg["objects"][name]]
            for name in KEY_CACHES
        ),
        ["Slab growth after deleting the files (KiB)", tc["slab_kb"], None],
        ["µs per cycle (wall / cycles)", t["run"]["us_per_cycle"], lf["run"]["us_per_cycle"]],
        ["daemon RSS before (MiB)", None, mib(lf["rss_before_bytes"])],
        ["daemon RSS at end of run (MiB)", None, mib(lf["rss_after_run_bytes"])],
        ["daemon RSS after reclaim (MiB)", None, mib(lf["rss_after_bytes"])],
        ["daemon peak RSS since start (MiB)", None, mib(lf["rss_peak_bytes"])],
        ["node table entries before", None, tb.get("nodes")],
        ["node table entries at end of run", None, la.get("nodes")],
        ["node table entries after reclaim", None, lr.get("nodes")],
        ["fuse_inode objects at end of run", None, lf["objects_at_end_of_run"]["fuse_inode"]],
        ["seconds from end of run to reclaimed", None, lf["reclaim_s"]],
    ]
    return render_table(
        f"Memory after {memory['locks']:,} distinct cold locks ({memory['procs']} processes)",
        ("", "tmpfs", "lockfs"),
        rows,
    )


def render_held(held: dict[str, Any]) -> str:
    t, lf = held["tmpfs"], held["lockfs"]

    def pair(key: Callable[[dict[str, Any]], Any]) -> list[Any]:
        a, b = key(t), key(lf)
        ratio = b / a if isinstance(a, int | float) and isinstance(b, int | float) and a else None
        return [a, b, ratio]

    few, many = held["few"], held["held"]
    while_held = lf["many"].get("table_while_held", {})
    rows = [
        [f"hot µs/cycle, {few} held", *pair(lambda d: d["few"]["hot"]["us_per_cycle"])],
        [f"hot µs/cycle, {many:,} held", *pair(lambda d: d["many"]["hot"]["us_per_cycle"])],
        [f"cost ratio {many:,} / {few} held", t["cost_ratio"], lf["cost_ratio"], None],
        [
            f"FUSE requests/hot cycle, {many:,} held",
            None,
            lf["many"]["hot"].get("requests_total_per_cycle"),
            None,
        ],
        [
            f"µs to take each of {many:,} locks",
            *pair(lambda d: d["many"]["acquire_us_per_lock"]),
        ],
        ["node table entries while held", None, while_held.get("nodes"), None],
        ["daemon RSS while held (MiB)", None, mib(while_held.get("rss_bytes")), None],
        ["seconds to reclaim after release", None, lf.get("reclaim_s"), None],
    ]
    return render_table(
        f"Held locks: {many:,} held by {held['procs']} processes vs {few}; "
        "hot cycles on another path",
        RUN_HEADER,
        rows,
    )


def render_listing(section: dict[str, Any]) -> str:
    """Hot cycles alone and while the listers list the big directory, and their ratio."""
    rows: list[list[Any]] = []
    for run in section["runs"]:
        procs, alone, busy = run["procs"], run["alone"], run["listing"]
        rows += [
            [f"hot cycles/s, {procs} process(es), alone", alone["cycles_per_s"]],
            [f"hot cycles/s, {procs} process(es), while listing", busy["cycles_per_s"]],
            [f"ratio (goal >= 0.5), {procs} process(es)", run["ratio"]],
            [f"listings/s meanwhile, {procs} process(es)", run["listings_per_s"]],
            [f"entries listed/s meanwhile, {procs} process(es)", run["entries_per_s"]],
            [f"daemon CPU µs/hot cycle while listing, {procs} process(es)",
             busy.get("daemon_cpu_us_per_cycle")],
        ]  # fmt: skip
    return render_table(
        f"Listing: hot cycles while {section['listers']} processes list a directory of "
        f"{section['entries']:,} held locks in a loop ({section['cycles']:,} cycles per run)",
        ("", "lockfs"),
        rows,
    )


def render(results: dict[str, Any]) -> str:
    """All tables of a run."""
    meta = results["meta"]
    cfg = results["config"]
    blocks = [
        f"lockfs-bench {meta['date']}: {meta['nproc']} CPUs ({meta['cpu']}), "
        f"Linux {meta['kernel']}, Python {meta['python']}, pyfuse3 {meta['pyfuse3']}, "
        f"trio {meta['trio']}\nlockfs {cfg['lockfs_mount']} reclaim_delay={cfg['reclaim_delay']} "
        f"dir_grace={cfg['dir_grace']}; tmpfs {cfg['tmpfs_mount']}; {cfg['procs']} processes "
        f"for N; preset {cfg['preset']}; reference servers: "
        f"{', '.join(cfg.get('references', [])) or 'none'}; hot and cold runs in "
        f"{cfg.get('rounds', 1)} rounds"
    ]
    if "hot" in results:
        blocks.append(
            render_runs(
                "Hot: open(O_RDWR|O_CREAT) + flock(LOCK_EX) + close", results["hot"], cold=False
            )
        )
    if "cold" in results:
        blocks.append(
            render_runs("Cold: PBS chunk lock sequence, fresh path", results["cold"], cold=True)
        )
    if "memory" in results:
        blocks.append(render_memory(results["memory"]))
    if "held" in results:
        blocks.append(render_held(results["held"]))
    if "listing" in results:
        blocks.append(render_listing(results["listing"]))
    requests = render_requests(results)
    if requests:
        blocks.append(requests)
    for name in reference.REFERENCES:
        table = render_request_table(
            f"FUSE requests per cycle by type ({name} server)",
            reference.request_columns(results, name),
        )
        if table:
            blocks.append(table)
    for section, error in results.get("errors", {}).items():
        blocks.append(f"{section}: FAILED: {error}")
    return "\n\n".join(blocks) + "\n"


def write_json(path: str, results: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
