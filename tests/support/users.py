"""A second, real, unprivileged user for the tests that need one."""

from __future__ import annotations

import pwd
import subprocess

#: The unprivileged user of the tests that need a second, real user.
SECOND_USER = "lockfs-test"


def ensure_user(name: str = SECOND_USER) -> pwd.struct_passwd:
    """The user ``name``, created with useradd (a system user without home or login shell)
    if the machine lacks it."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
        )
        return pwd.getpwnam(name)


def as_user(user: pwd.struct_passwd) -> list[str]:
    """The command prefix that runs a command as ``user``, with only its own group."""
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
