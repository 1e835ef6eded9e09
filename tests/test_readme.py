"""The README tells the truth: its commands, variables and CLI commands exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import click
import pytest

from receiver.cli import main
from receiver.settings import KNOWN_VARIABLES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def cli_commands(group: click.Group, prefix: str = "receiver") -> set[str]:
    names = set()
    for name, command in group.commands.items():
        names.add(f"{prefix} {name}")
        if isinstance(command, click.Group):
            names |= cli_commands(command, f"{prefix} {name}")
    return names


@pytest.mark.parametrize("target", ["run", "test"])
def test_two_commands_are_make_targets(target: str) -> None:
    """`make run` and `make test` are documented and exist (make -n resolves them)."""
    assert f"make {target}" in README
    result = subprocess.run(
        ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert 0 == result.returncode, result.stderr


def test_ci_runs_the_test_command() -> None:
    """`.ci/run` runs the README's test command."""
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_documented_variables_match_the_settings_module() -> None:
    """Every variable in the README exists, and every variable the code reads is documented."""
    documented = set(re.findall(r"`(RECEIVER_[A-Z_]+)`", README))
    assert set() == documented - set(KNOWN_VARIABLES), "documented but unknown"
    assert set() == set(KNOWN_VARIABLES) - documented, "read by the code but undocumented"


def test_documented_cli_commands_exist() -> None:
    """Every `receiver …` command line in the README names a real command."""
    block = README.split("## Command line", 1)[1].split("```", 2)[1]
    documented = {
        " ".join(line.split()[:3]) for line in block.splitlines() if line.startswith("receiver")
    }
    known = cli_commands(main)
    # a two-word command followed by its argument: keep the known prefix
    resolved = {name if name in known else " ".join(name.split()[:2]) for name in documented}
    assert set() == resolved - known
    assert (
        set() == {name for name in known if not isinstance(_lookup(name), click.Group)} - resolved
    )


def _lookup(name: str) -> click.Command:
    command: click.Command = main
    for part in name.split()[1:]:
        assert isinstance(command, click.Group)
        command = command.commands[part]
    return command


def cited_tests() -> list[tuple[str, list[str]]]:
    """Every test the README cites: ``(file, [Class, test] or [test] or [])``. A cell's
    ``::name`` continues the file cited last (the guarantees table's shorthand)."""
    cited: list[tuple[str, list[str]]] = []
    last_file = ""
    for reference in re.findall(r"`((?:tests/|::)[^`\s]*)`", README):
        path, *names = reference.split("::")
        if path:
            last_file = path
        cited.append((path or last_file, names))
    return cited


def test_cited_tests_exist() -> None:
    """Each file, class and test the README cites as a proof exists: a renamed or deleted
    test cannot leave a guarantee pointing at nothing."""
    missing = []
    for path, names in cited_tests():
        target = ROOT / path
        if not target.exists():
            missing.append(path)
            continue
        if target.is_dir() or not names:
            continue
        source = target.read_text()
        for name in names:
            bare = name.split("[", 1)[0]
            if not re.search(
                rf"^\s*(?:async\s+)?(?:def|class)\s+{re.escape(bare)}\b", source, re.M
            ):
                missing.append(f"{path}::{name}")
    assert [] == missing
    assert len(cited_tests()) > 50, "the guarantees table is parsed"
