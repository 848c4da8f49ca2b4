"""The session-end check of tests/conftest.py: a run that leaves a process running fails.

Each case runs pytest in a subprocess, with this repository's conftest as a plugin, on a
tiny test file written here: one that leaks a child and a grandchild (re-parented to
init once its shell exits, outside any group the test made), one that stops what it
starts. The leaked processes are killed here whatever the check did.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import processes
from tests.processes import child_environment
from tests.servers import wait_until

REPO = Path(__file__).resolve().parents[1]

LEAKING = """
import os
import subprocess
from pathlib import Path


def test_leaks_a_child_and_a_grandchild():
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    shell = subprocess.run(
        ["sh", "-c", "sleep 61 </dev/null >/dev/null 2>&1 & echo $!"],
        capture_output=True, text=True, check=True,
    )
    Path(os.environ["LEAKED_PIDS"]).write_text(f"{child.pid} {shell.stdout.strip()}")
"""

TIDY = """
from tests import processes


def test_stops_what_it_starts():
    process = processes.start(["sleep", "60"])
    assert process.poll() is None
    processes.stop(process)
"""


def alive(pid: int) -> bool:
    """True while ``pid`` is a live ``sleep`` (not a zombie, not a reused pid)."""
    proc = Path("/proc", str(pid))
    try:
        stat = (proc / "stat").read_text()
        command = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    return command.startswith(b"sleep\0") and not stat[stat.rindex(")") + 2 :].startswith("Z")


@pytest.fixture
def leaked(tmp_path: Path) -> Iterator[Path]:
    """The file the leaking test writes its pids to; kills whichever of them still live."""
    pids = tmp_path / "pids"
    try:
        yield pids
    finally:
        for pid in map(int, pids.read_text().split() if pids.exists() else []):
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def inner_pytest(test_file: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.conftest"]
    return processes.run(
        [*argv, str(test_file)],
        cwd=REPO,
        timeout=120,
        env=child_environment(**variables),
    )


def test_a_run_that_leaves_processes_running_fails(tmp_path: Path, leaked: Path) -> None:
    test_file = tmp_path / "test_leak.py"
    test_file.write_text(LEAKING)
    result = inner_pytest(test_file, LEAKED_PIDS=str(leaked))
    output = result.stdout + result.stderr
    child, grandchild = map(int, leaked.read_text().split())
    assert result.returncode == 1, output
    assert "1 passed, 1 error" in output
    assert "2 process(es) the tests started still ran at the session's end" in output
    assert f"pid {child} (group {child}): sleep 60" in output  # the group it leads
    assert f"pid {grandchild} " in output
    assert "): sleep 61" in output
    # The check killed both (the grandchild was not in any group the test made).
    assert wait_until(lambda: not alive(child) and not alive(grandchild)), output


def test_a_run_that_stops_what_it_starts_passes(tmp_path: Path) -> None:
    test_file = tmp_path / "test_tidy.py"
    test_file.write_text(TIDY)
    result = inner_pytest(test_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "still ran" not in result.stdout
