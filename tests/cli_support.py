"""Helpers for tests that run the ``otel-stream`` command as a user does: subprocesses,
free loopback ports, and a real nginx with a temporary configuration."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests import processes
from tests.servers import free_port

NGINX = shutil.which("nginx") or next(
    (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)),
    None,
)


def command() -> list[str]:
    """The console script installed beside this Python, or the module when there is none.

    Either way the child imports this repository's otel_stream: ``child_environment``
    puts its src first on PYTHONPATH.
    """
    script = Path(sys.executable).parent / "otel-stream"
    if os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "otel_stream.cli"]


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return processes.run(
        [*command(), *args], timeout=timeout, env=dict(env) if env is not None else None
    )


def wait_for_port(port: int, process: subprocess.Popen[str] | None = None, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if process is not None and process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise RuntimeError(f"process exited with {process.returncode}: {output}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[str]) -> str:
    """Stop a process this test started, and its whole group; returns what it printed."""
    return str(processes.stop(process) or "")


@contextlib.contextmanager
def demo_server(
    *extra_args: str, env: Mapping[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``otel-stream demo --serve`` on a free port; yields its base URL and process."""
    port = free_port()
    process = processes.start(
        [*command(), "demo", "--serve", "--port", str(port), *extra_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(env) if env is not None else None,
    )
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}", process
    finally:
        stop(process)


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass {upstream};
            {directives}
        }}
    }}
}}
"""


@contextlib.contextmanager
def nginx(upstream: str, directives: str) -> Iterator[str]:
    """A real nginx on a free loopback port proxying to ``upstream``; yields its URL."""
    assert NGINX is not None
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="otel-stream-nginx-") as directory:
        config = Path(directory, "nginx.conf")
        config.write_text(
            NGINX_CONF.format(dir=directory, port=port, upstream=upstream, directives=directives)
        )
        process = processes.start(
            [NGINX, "-p", directory, "-c", str(config), "-e", f"{directory}/error.log"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for_port(port, process)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(process)
