"""Running `repro` as a user does, for the store tests: in a forked process (a kill or a refusal ends only it)."""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path


from helpers import cli_process
from repro.store import FAULT_ENV


def start(*args, fault: str | None = None):
    """Start `repro ARGS` in its own process; returns (process, path of its output)."""
    output = Path(tempfile.mkstemp(suffix=".log")[1])
    process = cli_process(args, FAULT_ENV, fault, output)
    process.start()
    return process, output


def finished(started) -> subprocess.CompletedProcess:
    process, output = started
    process.join(timeout=600)
    text = output.read_text()
    output.unlink()
    return subprocess.CompletedProcess(process.name, process.exitcode, text, text)


def repro(*args, fault: str | None = None) -> subprocess.CompletedProcess:
    """`repro ARGS` as a user runs it, in its own (forked) process: a kill or a refusal ends only it."""
    return finished(start(*args, fault=fault))


def one_line_error(result) -> str:
    """The message of a refused run: exit 2, one line on stderr, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and "Warning" not in line
             and not line.startswith("  ") and "%|" not in line]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines and lines[-1].startswith("Error: "), result.stderr[-2000:]
    return lines[-1]
