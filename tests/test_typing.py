"""Types users can lean on: ``tests/typing/sample.py`` is checked by mypy and
pyright, both strict. It asserts the types a user's checker sees (a task's
signature, a job's result) and marks each call that must be an error with an
ignore comment that each checker must find necessary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "typing"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=HERE)


def test_mypy_sees_task_signatures_and_result_types() -> None:
    done = run(
        str(BIN / "mypy"), "--strict", "--no-incremental", "--config-file", "/dev/null",
        "sample.py",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_pyright_sees_task_signatures_and_result_types() -> None:
    done = run(str(BIN / "pyright"), "-p", str(HERE), "--pythonpath", sys.executable)
    assert done.returncode == 0, done.stdout + done.stderr
