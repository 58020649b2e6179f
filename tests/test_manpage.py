"""lockfs(8) (docs/lockfs.8, installed by the Debian package) matches the code: every command,
every ``-o`` option with the default the code uses, and the sections an administrator needs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support import REPO

from lockfs.admin import SUBCOMMANDS
from lockfs.options import (
    ALWAYS,
    IGNORED,
    KERNEL_FLAGS,
    NO_EFFECT_FLAGS,
    REFUSED,
    VALUE_OPTIONS,
    MountOptions,
    OptionError,
    parse_options,
)

MANPAGE = REPO / "docs" / "lockfs.8"
#: Defaults that are not a value an option can be set to.
DESCRIBED_DEFAULTS = {"uid": "the caller", "gid": "the caller", "metrics_file": "none"}


@pytest.fixture(scope="module")
def rendered() -> str:
    """The page as ``man`` shows it; man's warnings (bad roff) fail the test."""
    if shutil.which("man") is None:
        pytest.fail("man is missing (Debian package man-db: mount/setup --dev installs it)")
    env = {**os.environ, "MANWIDTH": "200", "MANPAGER": "cat", "LC_ALL": "C.UTF-8"}
    result = subprocess.run(
        ["man", "--warnings", "-l", MANPAGE], capture_output=True, text=True, env=env
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    # man hyphenates at line ends and uses Unicode hyphens; undo both for searching.
    return result.stdout.replace("\u2010", "-").replace("\u2011", "-")


def option_entries(page: str) -> dict[str, str]:
    """``NAME=`` (or flag) → the text of its entry in MOUNT OPTIONS."""
    section = page.split("\nMOUNT OPTIONS\n", 1)[1].split("\nGUARANTEES\n", 1)[0]
    entries: dict[str, str] = {}
    for block in re.split(r"\n(?=       \S)", section):
        head, _, body = block.strip().partition("\n")
        for name in re.findall(r"([a-z_]+)=", head) or [head.strip()]:
            entries[name] = " ".join(body.split())
    return entries


def test_the_page_has_the_sections_an_administrator_needs(rendered: str) -> None:
    for heading in (
        "NAME",
        "SYNOPSIS",
        "COMMANDS",
        "MOUNT OPTIONS",
        "GUARANTEES",
        "FAILURE BEHAVIOUR",
        "SECURITY",
        "FILES",
        "SEE ALSO",
    ):
        assert re.search(rf"^{heading}$", rendered, re.M), heading


def test_every_command_is_documented(rendered: str) -> None:
    for command in ["mount", *SUBCOMMANDS]:
        assert f"lockfs {command} " in rendered, command
    assert "mount -t fuse.lockfs lockfs MOUNTPOINT" in rendered


def test_every_value_option_has_its_code_default(rendered: str) -> None:
    entries = option_entries(rendered)
    defaults = MountOptions()
    for name in VALUE_OPTIONS:
        assert name in entries, f"-o {name}= is not in lockfs(8)"
        match = re.search(r"Default: (.+?)\.(?: |$)", entries[name])
        assert match, f"-o {name}= has no default in lockfs(8)"
        stated = match[1]
        if name in DESCRIBED_DEFAULTS:
            assert stated == DESCRIBED_DEFAULTS[name], name
            continue
        try:
            parsed = parse_options([f"{name}={stated}"])
        except OptionError as exc:
            raise AssertionError(f"lockfs(8) states default {name}={stated}: {exc}") from None
        assert getattr(parsed, name) == getattr(defaults, name), f"{name}={stated}"


def test_every_flag_and_refused_option_is_named(rendered: str) -> None:
    text = " ".join(rendered.split())
    for flag in sorted({*KERNEL_FLAGS, *NO_EFFECT_FLAGS, *IGNORED, *ALWAYS, "debug"}):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), flag
    for refused in REFUSED:
        assert refused in text, refused


def test_the_package_installs_this_page() -> None:
    assert Path(REPO / "debian" / "lockfs.manpages").read_text().split() == ["docs/lockfs.8"]
