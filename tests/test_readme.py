"""Every code block of the README runs, in order, as a new user would run it.

The blocks play one session in a fresh folder (the user's project), with the
``conveyor`` command of this environment on the PATH and no CONVEYOR_URL:

- a ``python`` block whose first line is ``# name.py`` is saved as that file
  (``tasks.py``, ``test_tasks.py``); any other ``python`` block is run as a
  script there and must exit 0;
- each line of a ``sh`` block is run by bash there and must exit 0, except
  that ``conveyor worker`` without ``--burst`` runs in the background until
  the end (then SIGTERM, and it must exit 0); ``JOB_ID`` stands for the id
  the last ``conveyor enqueue`` printed; ``make demo`` is run in the
  repository with this environment; ``make test`` is the command running
  this very test, so it is checked to be what ``.ci/run`` runs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
HEADER = re.compile(r"# ([\w.]+\.py)$")

pytestmark = pytest.mark.slow


def blocks() -> list[tuple[int, str, str]]:
    """(line number, language, text) of every fenced block, in order."""
    text = README.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2))
        for match in BLOCK.finditer(text)
    ]


def test_the_readme_has_blocks_of_known_kinds() -> None:
    found = blocks()
    assert len(found) >= 6
    assert {language for _, language, _ in found} <= {"python", "sh"}


class Session:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_URL"}
        bin_dir = str(Path(sys.executable).parent)
        self.env["PATH"] = bin_dir + os.pathsep + self.env.get("PATH", "")
        self.background: list[tuple[str, subprocess.Popen]] = []
        self.last_id: str | None = None

    def run(self, where: str, command: list[str], cwd: Path | None = None, timeout: float = 90):
        done = subprocess.run(
            command,
            cwd=cwd or self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"{where}: {command}\n{done.stdout}\n{done.stderr}"
        return done

    def python(self, line: int, text: str) -> None:
        first = text.splitlines()[0].strip()
        if (header := HEADER.fullmatch(first)) is not None:
            (self.folder / header.group(1)).write_text(text, encoding="utf-8")
            return
        script = self.folder / f"readme_line_{line}.py"
        script.write_text(text, encoding="utf-8")
        self.run(f"README line {line}", [sys.executable, script.name])

    def sh(self, line: int, text: str) -> None:
        for offset, command in enumerate(text.splitlines()):
            where = f"README line {line + 1 + offset}"
            command = command.strip()
            if not command or command.startswith("#"):
                continue
            if command.startswith("make "):
                self.make(where, command.split("#")[0].split())
                continue
            if "JOB_ID" in command:
                assert self.last_id, f"{where}: no job id printed before it"
                command = command.replace("JOB_ID", self.last_id)
            if command.startswith("conveyor worker") and "--burst" not in command:
                proc = subprocess.Popen(
                    ["bash", "-c", f"exec {command}"],
                    cwd=self.folder,
                    env=self.env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                self.background.append((where, proc))
                continue
            done = self.run(where, ["bash", "-c", command])
            if command.startswith("conveyor enqueue"):
                self.last_id = done.stdout.strip().splitlines()[-1]

    def make(self, where: str, words: list[str]) -> None:
        target = words[1]
        if target == "test":  # this very run: CI runs it through .ci/run
            assert "make test" in (ROOT / ".ci" / "run").read_text(), where
            return
        assert target == "demo", f"{where}: no rule to run make {target}"
        # This environment as it is: -o keeps make from reinstalling the
        # package into it from this checkout (pyproject.toml may look newer).
        venv = ["VENV=" + sys.prefix, "-o", str(Path(sys.prefix) / "bin" / "conveyor")]
        done = self.run(where, ["make", "-s", "demo", *venv], cwd=ROOT, timeout=120)
        assert "all as expected" in done.stdout, done.stdout

    def stop(self) -> None:
        for where, proc in self.background:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                output, _ = proc.communicate(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
            assert proc.returncode == 0, f"{where}: the worker exited {proc.returncode}\n{output}"


def test_every_readme_block_runs_in_order(tmp_path: Path) -> None:
    session = Session(tmp_path)
    try:
        for line, language, text in blocks():
            if language == "python":
                session.python(line, text)
            else:
                session.sh(line, text)
    finally:
        session.stop()
