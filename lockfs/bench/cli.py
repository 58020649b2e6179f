"""``lockfs-bench`` / ``python -m lockfs.bench``: options, and running the sections."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, TextIO

from ..control import ControlError
from .environment import environment, kill_workers
from .machine import machine_facts
from .progress import STARTED, BenchError, progress
from .report import render, write_json
from .sections import PRESETS, SECTION_FUNCS, SECTIONS, Bench, Sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lockfs.bench",
        description="Measure lock cycles and memory on lockfs beside tmpfs, in the same run.",
        epilog="Run as root. Explained in docs/benchmark.md.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes (smoke test, < 20 s)")
    size.add_argument("--full", action="store_true", help="the issue's sizes (1,000,000 locks)")
    parser.add_argument("--mount", metavar="DIR", help="measure this lockfs mount")
    parser.add_argument("--tmpfs", metavar="DIR", help="measure this tmpfs mount")
    parser.add_argument("--procs", type=int, default=max(2, os.cpu_count() or 2), metavar="N")
    parser.add_argument("--held-procs", type=int, default=4, metavar="N")
    parser.add_argument("--hot-cycles", type=int, metavar="N")
    parser.add_argument("--cold-cycles", type=int, metavar="N")
    parser.add_argument("--memory-locks", type=int, metavar="N")
    parser.add_argument("--held-locks", type=int, metavar="N")
    parser.add_argument("--listing-entries", type=int, metavar="N")
    parser.add_argument("--reclaim-delay", type=float, default=0.5, metavar="SECONDS")
    parser.add_argument(
        "--dir-grace", type=float, metavar="SECONDS", help="default 10 (--quick: 0.5)"
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"sections to run ({','.join(SECTIONS)})"
    )
    parser.add_argument("--json", metavar="FILE", help="write all numbers to FILE")
    parser.add_argument("--keep-going", action="store_true", help="run later sections on errors")
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help="hot and cold runs in N parts, the targets taking turns "
        "(default 4; --full: 10; --quick: 2)",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="do not run the hot and cold cycles on the reference servers too",
    )
    parser.add_argument(
        "--no-drop-caches", action="store_true", help="do not drop caches before slab readings"
    )
    args = parser.parse_args(argv)
    args.preset = "quick" if args.quick else "full" if args.full else "default"
    if args.dir_grace is None:
        args.dir_grace = 0.5 if args.quick else 10.0
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if args.procs < 1 or args.held_procs < 1:
        parser.error("--procs and --held-procs must be at least 1")
    if args.rounds is None:
        args.rounds = 2 if args.quick else 10 if args.full else 4
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = PRESETS[args.preset]
    overrides = {
        key: getattr(args, key)
        for key in ("hot_cycles", "cold_cycles", "memory_locks", "held_locks", "listing_entries")
        if getattr(args, key) is not None
    }
    return Sizes(**{**asdict(base), **overrides})


def run_sections(
    bench: Bench, sections: Sequence[str], results: dict[str, Any], keep_going: bool
) -> None:
    """Run ``sections`` in order, storing each result (or its error) in ``results``."""
    for name in sections:
        try:
            results[name] = SECTION_FUNCS[name](bench)
        except (BenchError, OSError, ControlError) as exc:
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
            progress(f"{name}: FAILED: {exc}")
            if os.environ.get("LOCKFS_BENCH_TRACEBACK"):
                traceback.print_exc()
            if not keep_going:
                return
            kill_workers()


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("lockfs-bench: must run as root (it mounts filesystems)", file=sys.stderr)
        return 1
    # Ctrl-C interrupts even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    sizes = sizes_from(args)
    results: dict[str, Any] = {"meta": machine_facts(), "errors": {}}
    try:
        with environment(args) as (tmpfs, lockfs, references):
            results["config"] = {
                "preset": args.preset,
                "sizes": asdict(sizes),
                "procs": args.procs,
                "held_procs": args.held_procs,
                "lockfs_mount": args.mount or "own",
                "tmpfs_mount": args.tmpfs or "own",
                "references": [target.name for target in references],
                "rounds": args.rounds,
                "reclaim_delay": lockfs.reclaim_delay,
                "dir_grace": lockfs.dir_grace,
                "drop_caches": not args.no_drop_caches,
                "command": " ".join(["python -m lockfs.bench", *(argv or sys.argv[1:])]),
            }
            bench = Bench(
                tmpfs,
                lockfs,
                sizes,
                args.procs,
                args.held_procs,
                not args.no_drop_caches,
                references=references,
                rounds=args.rounds,
            )
            run_sections(bench, args.sections, results, args.keep_going)
    except KeyboardInterrupt:
        print("lockfs-bench: interrupted; mounts cleaned up", file=sys.stderr)
        return 130
    except (BenchError, ControlError, OSError, subprocess.CalledProcessError) as exc:
        print(f"lockfs-bench: {exc}", file=sys.stderr)
        return 1
    results["meta"]["seconds"] = round(time.monotonic() - STARTED, 1)
    out.write(render(results))
    if args.json:
        write_json(args.json, results)
    return 1 if results["errors"] else 0
