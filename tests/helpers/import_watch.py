#!/usr/bin/env python3
"""``LOCKFS_IMPORT_LOG=FILE import_watch.py ARGS``: run ``lockfs ARGS`` and log every module
that this process, or the daemon it forks, loads from then on (an ``import`` audit event is
raised only when a module is not in ``sys.modules`` yet). Each line: ``PID MODULE``.
"""

from __future__ import annotations

import os
import runpy
import sys

_log_fd = os.open(
    os.environ["LOCKFS_IMPORT_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
)


def _log_import(event: str, args: tuple[object, ...]) -> None:
    if event == "import":
        os.write(_log_fd, f"{os.getpid()} {args[0]}\n".encode())


sys.addaudithook(_log_import)
sys.argv[0] = "lockfs"
runpy.run_module("lockfs", run_name="__main__", alter_sys=True)
