"""A mount's status: one typed record, and the one place that turns it into JSON and text.

The daemon builds a :class:`MountStatus` on request (see lockfs.commands); the control socket
sends :meth:`MountStatus.to_json`, and clients (``lockfs status``, ``lockfs metrics``, the tests)
rebuild the record with :meth:`MountStatus.from_json`. ``lockfs status`` shows
:func:`format_text`; Prometheus names live on the fields themselves (``metric`` metadata) and
are rendered by lockfs.metrics.

The JSON field names are an interface (scripts and lockfs-bench read them): never rename one.
Adding a field is one line here, with a default, so that a newer client can still read the
status of a daemon started before an upgrade; the daemon then fills it in lockfs.commands.
Options are :class:`~lockfs.options.MountOptions`: a new mount option appears in the status,
its JSON and its text by itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .humanize import format_duration, group_name, user_name
from .options import MountOptions


@dataclass(frozen=True)
class Metric:
    """How a status field appears in Prometheus text format.

    Fields sharing a name are one metric told apart by ``labels``; a mapping field gives one
    sample per key, labelled ``key_label``.
    """

    name: str
    kind: str  # "gauge" or "counter"
    help: str
    labels: Mapping[str, str] = field(default_factory=dict)
    key_label: str | None = None


def _metric(name: str, kind: str, help_text: str, **extra: Any) -> Any:
    return field(metadata={"metric": Metric(name, kind, help_text, **extra)})


def metric_of(status_field: dataclasses.Field[Any]) -> Metric | None:
    """The Prometheus metric a :class:`MountStatus` field is shown as, if any."""
    metric = status_field.metadata.get("metric")
    return metric if isinstance(metric, Metric) else None


_NODES_HELP = "Live entries in the node table, by kind."


@dataclass(frozen=True, kw_only=True)
class MountStatus:
    """Counters and sizes of one mount at one moment (``lockfs status``)."""

    #: The mountpoint: absolute, without symlinks.
    mountpoint: str
    #: The daemon's process id.
    pid: int
    #: Seconds since the daemon started.
    uptime_s: float = _metric("lockfs_uptime_seconds", "gauge", "Seconds since the daemon started.")
    #: Live entries in the node table, the root included (``files + dirs``).
    nodes: int
    files: int = _metric("lockfs_nodes", "gauge", _NODES_HELP, labels={"kind": "file"})
    dirs: int = _metric("lockfs_nodes", "gauge", _NODES_HELP, labels={"kind": "dir"})
    #: Nodes with at least one open handle.
    open: int = _metric("lockfs_open_files", "gauge", "Nodes with at least one open handle.")
    #: Nodes the kernel holds a reference on (lookup count above 0).
    referenced: int = _metric(
        "lockfs_kernel_referenced", "gauge", "Nodes the kernel holds a reference on."
    )
    #: Idle nodes waiting for their delay before they are reclaimed.
    reclaim_backlog: int = _metric(
        "lockfs_reclaim_backlog", "gauge", "Idle nodes waiting for their delay."
    )
    #: Nodes created since the mount.
    created: int = _metric("lockfs_entries_created_total", "counter", "Nodes created since mount.")
    #: Idle nodes reclaimed since the mount.
    reclaimed: int = _metric("lockfs_entries_reclaimed_total", "counter", "Idle nodes reclaimed.")
    #: Entries the daemon asked the kernel to drop from its cache.
    invalidations: int = _metric(
        "lockfs_invalidations_total", "counter", "Entries the daemon asked the kernel to drop."
    )
    #: FUSE requests served, by request type (``lookup``, ``open``, ...).
    requests: Mapping[str, int] = _metric(
        "lockfs_requests_total", "counter", "FUSE requests served, by type.", key_label="op"
    )
    #: Internal errors in request handlers. Each fails the mount closed (the daemon exits), so
    #: a daemon that answers shows 0; the log has the last one's request and traceback.
    faults: int = _metric(
        "lockfs_faults_total", "counter", "Internal errors in handlers (each fails closed)."
    )
    #: The daemon's resident memory in bytes.
    rss_bytes: int = _metric("lockfs_resident_memory_bytes", "gauge", "Daemon resident memory.")
    #: The mount options in force.
    options: MountOptions
    #: Where the daemon's next log line goes, and where earlier ones went if elsewhere
    #: (lockfs.logs): "syslog (/dev/log)", "journal (...)", a file under /run/lockfs, "stderr".
    log: str = ""
    #: Errors that ended the invalidation thread (each logged with its traceback; the thread
    #: was restarted: lockfs.invalidator).
    thread_faults: int = field(
        default=0,
        metadata={
            "metric": Metric(
                "lockfs_thread_faults_total",
                "counter",
                "Errors that ended the invalidation thread (logged; it was restarted).",
            )
        },
    )
    #: Entry invalidations waiting in the kernel beyond their bound now (their directories'
    #: entries wait; reclaim goes on elsewhere), and since the mount.
    invalidations_stuck: int = field(
        default=0,
        metadata={
            "metric": Metric(
                "lockfs_invalidations_stuck",
                "gauge",
                "Entry invalidations stuck in the kernel now (their directory waits).",
            )
        },
    )
    invalidations_stuck_total: int = field(
        default=0,
        metadata={
            "metric": Metric(
                "lockfs_invalidations_stuck_total",
                "counter",
                "Entry invalidations that did not return within their bound.",
            )
        },
    )
    #: The directories of the stuck invalidations (absolute paths) → seconds stuck.
    stuck_directories: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON document the control socket sends and ``lockfs status --json`` prints."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["requests"] = dict(self.requests)
        out["stuck_directories"] = dict(self.stuck_directories)
        out["options"] = _options_to_json(self.options)
        return out

    @classmethod
    def from_json(cls, data: Any) -> MountStatus:
        """Rebuild the record from :meth:`to_json`'s document. Unknown keys (from a newer
        daemon) are ignored; a missing field without a default raises ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError(f"a status must be a JSON object, not {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        if "options" in values:
            values["options"] = _options_from_json(values["options"])
        try:
            return cls(**values)
        except TypeError as exc:  # a missing field
            raise ValueError(f"not a lockfs status: {exc}") from None


def _options_to_json(options: MountOptions) -> dict[str, Any]:
    out = dataclasses.asdict(options)
    out["mode"] = f"{options.mode:04o}"
    return out


def _options_from_json(data: Any) -> MountOptions:
    if not isinstance(data, dict):
        raise ValueError("status options must be a JSON object")
    known = {f.name for f in dataclasses.fields(MountOptions)}
    values = {key: value for key, value in data.items() if key in known}
    if "mode" in values:
        values["mode"] = int(values["mode"], 8)
    return MountOptions(**values)


def format_options(options: MountOptions) -> tuple[str, str]:
    """The options as ``key=value`` items (names for uid and gid, octal mode, flags that are
    on by name) and the kernel flags, each a comma list."""
    items = []
    for option in dataclasses.fields(options):
        value = getattr(options, option.name)
        if option.name == "kernel_flags" or value is None or value is False:
            continue
        if option.name == "uid":
            value = user_name(value)
        elif option.name == "gid":
            value = group_name(value)
        elif option.name == "mode":
            value = f"{value:04o}"
        items.append(option.name if value is True else f"{option.name}={value}")
    return ", ".join(items), ", ".join(options.kernel_flags) or "none"


def format_text(status: MountStatus) -> str:
    """``lockfs status`` as a person reads it."""
    total = sum(status.requests.values())
    by_count = sorted(status.requests.items(), key=lambda item: (-item[1], item[0]))
    by_type = ", ".join(f"{op} {count}" for op, count in by_count)
    options, kernel_flags = format_options(status.options)
    lines = [
        f"mountpoint       {status.mountpoint} (daemon pid {status.pid})",
        f"uptime           {format_duration(status.uptime_s)}",
        f"live entries     {status.files} files, {status.dirs} directories "
        f"({status.open} open, {status.referenced} referenced by the kernel)",
        f"since mount      {status.created} created, {status.reclaimed} reclaimed, "
        f"{status.invalidations} entries dropped from the kernel's cache",
        f"reclaim backlog  {status.reclaim_backlog} idle entries waiting for their delay",
        f"requests         {total} ({by_type or 'none'})",
        f"faults           {status.faults} (internal errors: each fails the mount closed)",
        f"thread faults    {status.thread_faults} (errors that ended the invalidation thread; "
        f"restarted)",
        f"stuck            {_stuck_text(status)}",
        f"memory           {status.rss_bytes / 2**20:.1f} MiB resident",
        f"log              {status.log or 'unknown (the daemon predates this field)'}",
        f"options          {options}",
        f"kernel flags     {kernel_flags}",
    ]
    return "\n".join(lines)


def _stuck_text(status: MountStatus) -> str:
    """The stuck entry invalidations: how many, where, for how long."""
    since = f"{status.invalidations_stuck_total} since mount"
    stuck = sorted(status.stuck_directories.items(), key=lambda item: -item[1])
    if not stuck:
        return f"none ({since})"
    where = ", ".join(f"{format_duration(seconds)} in {path}" for path, seconds in stuck)
    plural = "s" if len(stuck) > 1 else ""
    return f"{len(stuck)} entry invalidation{plural}: {where} (reclaim waits there; {since})"
