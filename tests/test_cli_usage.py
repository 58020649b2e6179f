"""The ``lockfs`` command without a mount: usage errors, and what its options decide."""

from __future__ import annotations

import logging
import re

import pytest
from support import REPO, run_lockfs

from lockfs import cli
from lockfs.testing_hooks import NO_HOOKS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "lockfs: error: unrecognized option '--bogus'"),
        (["-f", "--bogus"], "lockfs: error: unrecognized option '--bogus'"),
        (["mount", "--bogus"], "lockfs mount: error: unrecognized arguments: --bogus"),
        (["status", "--jsn"], "lockfs status: error: unrecognized arguments: --jsn"),
        (["locks", "-x", "--bogus"], "lockfs locks: error: unrecognized arguments: -x --bogus"),
        (["metrics", "--timeout=1", "-j"], "lockfs metrics: error: unrecognized arguments: -j"),
    ],
    ids=["alone", "with-f", "mount", "status", "locks", "metrics"],
)
def test_an_unknown_option_is_named_before_a_missing_argument(
    args: list[str], message: str
) -> None:
    """argparse would report the missing MOUNTPOINT first; the typo is the real mistake."""
    result = run_lockfs(*args, timeout=20)
    assert result.returncode == 2, result.stderr
    assert any(line.startswith(message) for line in result.stderr.splitlines()), result.stderr
    assert "required" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [["-f"], ["mount", "--fore"], ["status", "--json"], ["locks", "--json", "--"]],
    ids=["f", "abbreviated", "status", "dashes"],
)
def test_known_options_without_a_mountpoint_say_it_is_required(args: list[str]) -> None:
    result = run_lockfs(*args, timeout=20)
    assert result.returncode == 2, result.stderr
    assert "error: the following arguments are required: mountpoint" in result.stderr
    assert "unrecognized" not in result.stderr


def test_a_detaching_daemon_logs_at_the_level_its_options_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once ready, the daemon's logging follows its parsed ``debug`` option, whatever level
    the root logger happens to be at."""
    chosen: list[bool] = []
    monkeypatch.setattr(cli.logs, "detached", lambda debug, *args, **kw: chosen.append(debug))
    monkeypatch.setattr(cli.os, "dup2", lambda *args: None)  # keep pytest's stdio
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", logging.DEBUG)
    cli._detach_stdio("/mnt", NO_HOOKS, debug=False)
    monkeypatch.setattr(root, "level", logging.WARNING)
    cli._detach_stdio("/mnt", NO_HOOKS, debug=True)
    assert chosen == [False, True]


def readme_usage() -> list[str]:
    """The command lines of the README's Usage block."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Usage\n", 1)[1].split("```\n", 2)[1]
    return [line for line in block.splitlines() if line.startswith("lockfs ")]


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_the_readme_usage_shows_every_option_of_every_command(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    usage = capsys.readouterr().out.split("\n\n", 1)[0]
    options = set(re.findall(r"\[(--?[\w-]+)", usage)) - {"-h"}
    assert options, usage
    lines = [line for line in readme_usage() if line.startswith(f"lockfs {command} ")]
    assert len(lines) == 1, (command, readme_usage())
    shown = set(re.findall(r"\[(--?[\w-]+)", lines[0]))
    assert shown == options, (lines[0], usage)
