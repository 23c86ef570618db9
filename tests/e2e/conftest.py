"""Fixtures for the end-to-end CLI tests: run ``stalwart`` as a real subprocess.

Every command runs in a temporary working directory holding a copy of ``cli_app.py``
(so ``--app cli_app:engine`` resolves from the current directory) against a temporary
SQLite file named by ``CLI_APP_DB`` (the app engine's URL).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
APP_SOURCE = HERE / "cli_app.py"
COMMAND_TIMEOUT = 60.0
"""Seconds any single CLI invocation may take before the test fails."""


@dataclass
class Cli:
    """Runs the ``stalwart`` CLI in ``cwd`` with ``env``."""

    cwd: Path
    env: dict[str, str]
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "stalwart.cli"])

    def with_env(self, **env: str) -> Cli:
        """The same CLI with extra environment variables."""
        return replace(self, env={**self.env, **env})

    def with_command(self, *command: str) -> Cli:
        """The same CLI started by another command line (e.g. the console script)."""
        return replace(self, command=list(command))

    def run(self, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
        """Run one command; check its exit code (unless ``expect`` is None)."""
        proc = subprocess.run(
            [*self.command, *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        if expect is not None:
            assert proc.returncode == expect, (
                f"stalwart {' '.join(args)} exited {proc.returncode}, expected {expect}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def json(self, *args: str) -> Any:
        """Run a command with ``--json`` and parse its stdout."""
        return json.loads(self.run(*args, "--json").stdout)

    def wait_status(self, instance_id: str, wanted: str, timeout: float = 30.0) -> None:
        """Poll ``status`` until the instance reaches ``wanted``."""
        deadline = time.monotonic() + timeout
        current = None
        while time.monotonic() < deadline:
            current = self.json("status", instance_id)["status"]
            if current == wanted:
                return
            time.sleep(0.1)
        raise AssertionError(f"{instance_id} is {current!r}, not {wanted!r}, after {timeout}s")


class WorkerProcess:
    """A ``stalwart worker`` running in the background, logging to a file."""

    def __init__(self, cli: Cli, log: Path, *args: str) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            [*cli.command, "worker", *args],
            cwd=cli.cwd,
            env=cli.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def output(self) -> str:
        """Everything the worker printed so far."""
        return self.log.read_text()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait for the worker's start-up log line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "serving workflows" in self.output():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"the worker did not start:\n{self.output()}")

    def stop(self, timeout: float = 30.0) -> int:
        """Send SIGTERM and return the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """Kill the process if it is still running and release its resources."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if not self._log_file.closed:
            self._log_file.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory holding the test application module."""
    path = tmp_path_factory.mktemp("cli")
    shutil.copy(APP_SOURCE, path / "cli_app.py")
    return path


def _environment(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    env.pop("COLUMNS", None)
    env["CLI_APP_DB"] = f"sqlite:///{workdir / 'app.db'}"
    env["STALWART_APP"] = "cli_app:engine"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def cli(workdir: Path) -> Cli:
    """The CLI, pointed at the test app through ``STALWART_APP``."""
    return Cli(workdir, _environment(workdir))


@pytest.fixture(scope="module")
def worker(cli: Cli, workdir: Path) -> Iterator[WorkerProcess]:
    """One background worker shared by the module; it must stop cleanly on SIGTERM."""
    proc = WorkerProcess(cli, workdir / "worker.log", "cli_app:engine", "--name", "e2e")
    try:
        proc.wait_ready()
        yield proc
    finally:
        code = proc.stop()
        out = proc.output()
    assert code == 0, out
    assert "Traceback" not in out, out
    assert "worker stopped" in out, out


SpawnWorker = Callable[..., WorkerProcess]
"""``spawn_worker(cli, log_name, *worker_args)`` starts a background worker."""


@pytest.fixture
def spawn_worker(workdir: Path) -> Iterator[SpawnWorker]:
    """Start extra workers in a test; any still running at the end are killed."""
    started: list[WorkerProcess] = []

    def spawn(cli: Cli, log_name: str, *args: str) -> WorkerProcess:
        proc = WorkerProcess(cli, workdir / log_name, *args)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        proc.kill()
