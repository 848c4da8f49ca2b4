"""Child processes of the test suite: the one environment builder, starting and stopping
in process groups, and the session-end check that nothing the tests started still runs.

Every test that starts a process goes through ``start`` or ``run`` here, with an
environment from ``child_environment``. ``tests/conftest.py`` marks the session
(``mark_session``) and fails the run when ``leftovers`` finds anything at its end.

Choices made on purpose:

- Every child leads a process group of its own (``start_new_session=True``) and is
  stopped with the whole group (``os.killpg``): a server that forks workers (hypercorn,
  gunicorn) loses them with it, even when the test kills the parent outright.
- The marker variable ``MARKER`` holds the pids of the pytest sessions a process was
  started under (colon-separated, outermost first). It is set in pytest's own
  environment, so every descendant inherits it: the servers a benchmark script starts,
  a grandchild that called ``setsid`` or re-parented to init. The session-end check
  reads it from ``/proc/<pid>/environ``; no parent chain or process group can hide a
  process from it.
- The marker's name does not start with ``OTEL_``: the builder drops every ``OTEL_*``
  variable, and otel-stream warns about unknown ``OTEL_STREAM_*`` ones.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The environment variable naming the pytest sessions a process descends from.
MARKER = "PYTEST_OTEL_STREAM_SESSIONS"
#: The scripts installed beside this Python (uvicorn, opentelemetry-instrument, ...).
BIN = Path(sys.executable).parent
#: This repository's sources: first on every child's path, so a child imports this
#: checkout's otel_stream even where another clone is the installed one.
SRC = Path(__file__).resolve().parents[1] / "src"


def python_path(*first: Path | str) -> str:
    """PYTHONPATH for a child process: ``first``, this repository's src, then any
    PYTHONPATH set here."""
    existing = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([*map(str, first), str(SRC), *([existing] if existing else [])])


def child_environment(
    *first_on_path: Path | str, inherit: bool = True, **variables: str
) -> dict[str, str]:
    """The environment of a child process the tests start.

    This process's environment (or nothing but ``PATH`` when ``inherit`` is false)
    without ``OTEL_*`` or ``FASTAPI_OTEL*`` leftovers; the scripts beside this Python
    first on ``PATH``; ``first_on_path`` and this repository's src first on
    ``PYTHONPATH``; unbuffered output; the session marker; then ``variables``.
    """
    if inherit:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("OTEL_", "FASTAPI_OTEL"))
        }
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    else:
        env = {"PATH": str(BIN)}
    env["PYTHONPATH"] = python_path(*first_on_path)
    env["PYTHONUNBUFFERED"] = "1"
    env[MARKER] = _sessions()
    env.update(variables)
    return env


def _sessions() -> str:
    """The marker's value for a child of this process."""
    return os.environ.get(MARKER) or str(os.getpid())


def start(
    argv: Sequence[str], *, env: dict[str, str] | None = None, **options: Any
) -> subprocess.Popen[Any]:
    """``subprocess.Popen`` as the leader of a process group of its own, with
    ``child_environment()`` unless ``env`` is given (which gets the marker added)."""
    env = child_environment() if env is None else {**env, MARKER: _sessions()}
    return subprocess.Popen(list(argv), env=env, start_new_session=True, **options)


def signal_group(process: subprocess.Popen[Any], signum: int) -> None:
    """Send ``signum`` to every process left in ``process``'s group (none left: nothing)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def stop(process: subprocess.Popen[Any], timeout: float = 10.0, first: int = signal.SIGTERM) -> Any:
    """Stop ``process`` and its whole group: ``first`` (SIGTERM, so telemetry flushes),
    SIGKILL after ``timeout``, then SIGKILL to whatever the group still holds once the
    leader has exited. Returns what the process wrote to its pipes (None without one)."""
    if process.poll() is None:
        signal_group(process, first)
    else:  # the leader is gone: whatever its group still holds has nobody to wait for
        signal_group(process, signal.SIGKILL)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(process, signal.SIGKILL)
        output, _ = process.communicate(timeout=5)
    signal_group(process, signal.SIGKILL)
    return output


def kill(process: subprocess.Popen[Any]) -> None:
    """SIGKILL ``process`` and its whole group at once (nothing flushes)."""
    stop(process, first=signal.SIGKILL)


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    check: bool = False,
    env: dict[str, str] | None = None,
    **options: Any,
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv, capture_output=True, text=True)`` in a process group of its
    own; on ``timeout`` the whole group is killed and ``TimeoutExpired`` raised."""
    process = start(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        kill(process)
        raise
    signal_group(process, signal.SIGKILL)  # anything it left behind in its group
    result = subprocess.CompletedProcess(list(argv), process.returncode, stdout, stderr)
    if check:
        result.check_returncode()
    return result


# The session-end check ----------------------------------------------------------------


def mark_session() -> None:
    """Mark every process started from now on as started under this pytest session."""
    sessions = [pid for pid in os.environ.get(MARKER, "").split(":") if pid]
    if str(os.getpid()) not in sessions:
        os.environ[MARKER] = ":".join([*sessions, str(os.getpid())])


@dataclass(frozen=True)
class Leftover:
    """A live process that carries this session's marker."""

    pid: int
    pgid: int
    command: str


def _alive_and_marked(pid: int, session: str) -> Leftover | None:
    proc = Path("/proc", str(pid))
    try:
        environ = (proc / "environ").read_bytes()
        stat = (proc / "stat").read_text()
        command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # gone meanwhile, or not ours to read
        return None
    if stat[stat.rindex(")") + 2 :].startswith(("Z", "X")):  # exited, not yet reaped
        return None
    for entry in environ.split(b"\0"):
        name, _, value = entry.partition(b"=")
        if name == MARKER.encode() and session in value.decode(errors="replace").split(":"):
            with contextlib.suppress(OSError):
                return Leftover(pid, os.getpgid(pid), command.strip())
    return None


def leftovers(grace: float = 0.0) -> list[Leftover]:
    """The live processes started under this session (but not this process), waiting up
    to ``grace`` seconds for ones that are still exiting."""
    session, me = str(os.getpid()), os.getpid()
    deadline = time.monotonic() + grace
    while True:
        found = [
            leftover
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and int(entry.name) != me
            if (leftover := _alive_and_marked(int(entry.name), session)) is not None
        ]
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def stop_leftovers(found: Sequence[Leftover]) -> None:
    """SIGKILL each leftover's process group (or the process alone when it shares ours)."""
    mine = os.getpgid(0)
    for leftover in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if leftover.pgid != mine:
                os.killpg(leftover.pgid, signal.SIGKILL)
            else:
                os.kill(leftover.pid, signal.SIGKILL)
