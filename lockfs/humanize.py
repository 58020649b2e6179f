"""How the admin commands show durations and ids to people (JSON output keeps raw numbers)."""

from __future__ import annotations

import grp
import pwd


def format_duration(seconds: float) -> str:
    """``0.3s``, ``59.9s``, ``2m03s``, ``1h02m``, ``3d04h``: two units at most, the larger
    first, so a column of durations stays short and sorts by eye."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def user_name(uid: int) -> str:
    """The user's name, or the number for a uid without a passwd entry."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    """The group's name, or the number for a gid without a group entry."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
