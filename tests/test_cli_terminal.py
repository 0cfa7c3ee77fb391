"""CLI tests do not depend on the terminal they are run from (issue 11 §1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from psbench.cli._common import console, refresh_consoles

#: CLI tests whose assertions read rich-rendered tables and messages
CLI_TESTS = [
    "tests/test_run_identity.py::test_runs_with_different_weights_are_two_rows",
    "tests/test_run_inputs.py",
    "tests/test_untrusted.py",
]


def test_fixture_pins_the_console_width() -> None:
    refresh_consoles()
    assert console.width == 200
    assert os.environ["COLUMNS"] == "200"
    assert "FORCE_COLOR" not in os.environ


@pytest.mark.slow
@pytest.mark.parametrize("outer", [{"COLUMNS": "40", "FORCE_COLOR": "1"}, {"COLUMNS": ""}], ids=["narrow", "unset"])
def test_cli_tests_pass_under_any_terminal(outer: dict[str, str]) -> None:
    """Run the CLI tests in a child pytest under a 40-column coloured terminal and with no $COLUMNS."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update({k: v for k, v in outer.items() if v})
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *CLI_TESTS],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:]
