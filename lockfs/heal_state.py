"""The self-healing watcher's state across its own restarts: recent failures (for the rate
limit) and a recovery under way, in ``/run/lockfs/<escaped mountpoint>.heal`` (JSON, root
only).

The watcher is restarted in the middle of every recovery (it is bound to the mount it
remounts), so what it must not forget lives here: when the mount failed, and which units it
stopped and must see started again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from . import rootfiles
from .control import RUN_DIR, escape_path

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """A recovery under way: when the mount failed, and the units to start again once a new
    mount answers (a failed mount never answers again: its daemon was killed)."""

    since: float
    units: list[str]


@dataclass
class HealState:
    """What the watcher keeps across its own restarts (one mount's state file)."""

    #: Monotonic times of the failures within the rate limit's window.
    failures: list[float] = field(default_factory=list)
    pending: Pending | None = None


class StateFile:
    """``DIRECTORY/<escaped mountpoint>.heal``: JSON, root only. The directory must be root's
    alone (lockfs.rootfiles.private_dir); the file is read without following a symlink and
    replaced whole (lockfs.rootfiles.replace_file), never written through one."""

    def __init__(self, mountpoint: str, directory: str = RUN_DIR) -> None:
        self.directory = directory
        self.name = escape_path(mountpoint) + ".heal"

    def load(self) -> HealState:
        dir_fd = rootfiles.private_dir(self.directory)
        try:
            fd = os.open(self.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            return HealState()
        finally:
            os.close(dir_fd)
        with os.fdopen(fd) as file:
            text = file.read()
        try:
            data = json.loads(text)
            pending = data.get("pending")
            return HealState(
                failures=[float(at) for at in data.get("failures", [])],
                pending=Pending(float(pending["since"]), [str(unit) for unit in pending["units"]])
                if pending
                else None,
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("heal: ignoring the unreadable state file %s/%s", self.directory, self.name)
            return HealState()

    def save(self, state: HealState) -> None:
        data: dict[str, object] = {"failures": state.failures, "pending": None}
        if state.pending is not None:
            data["pending"] = {"since": state.pending.since, "units": state.pending.units}
        os.close(rootfiles.private_dir(self.directory))  # created if missing, root's alone
        path = os.path.join(self.directory, self.name)
        rootfiles.replace_file(path, (json.dumps(data) + "\n").encode(), 0o600)
