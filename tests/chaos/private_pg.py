"""A private, throw-away PostgreSQL cluster that a test may stop and start at will.

The machine's shared cluster (port 5432) serves every other test and process: a test
that takes the database away must never touch it. :class:`PrivateCluster` runs
``initdb`` into a fresh temporary directory (owned by ``postgres`` when the tests run as
root, since the server refuses to run as root), on a free loopback port, listening on
``127.0.0.1`` only, with its socket in its own directory; :meth:`stop` and :meth:`start`
are ``pg_ctl stop -m fast`` / ``pg_ctl start``. The ``private_pg`` fixture yields a
running cluster and removes it (stopped, directory deleted) afterwards.

Where no PostgreSQL binaries are installed the fixture skips, except under ``CI=true``
where it fails: CI must not pass by silently skipping the outage scenarios.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.postgres_support import in_ci

SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """The directory of ``initdb``/``pg_ctl``: on PATH, else the newest Debian install."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateCluster:
    """One ``initdb``-created cluster in a temporary directory (see the module docstring)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="stalwart-private-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "run"
        self.logfile = self.root / "server.log"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        self.running = False

    # -- commands ----------------------------------------------------------------------
    def _run(self, *args: str, timeout: float = 120.0) -> str:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                f"{self.server_log()[-3000:]}"
            )
        return done.stdout

    def init(self) -> None:
        """``initdb`` (trust auth on loopback) and the settings of a private server."""
        self.socket_dir.mkdir()
        if self._as_postgres:
            shutil.chown(self.root, SUPERUSER)
            shutil.chown(self.socket_dir, SUPERUSER)
            self.root.chmod(0o755)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        )
        with (self.data / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "max_connections = 200\n"
                "shared_buffers = '32MB'\n"
                # A smaller checkpoint load: the machine is shared; fsync stays on.
                "max_wal_size = '256MB'\n"
            )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "start"
        )
        self.running = True

    def stop(self) -> None:
        """Stop the server (``-m fast``: sessions are terminated, nothing is lost)."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "stop", "-m", "fast")
        self.running = False

    def destroy(self) -> None:
        """Stop the server if it runs (immediate mode) and delete its directory."""
        if self.data.exists():
            with contextlib.suppress(Exception):
                self._run(
                    "pg_ctl", "-D", str(self.data), "-w", "-t", "30", "stop", "-m", "immediate"
                )
        self.running = False
        shutil.rmtree(self.root, ignore_errors=True)

    # -- URLs --------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        """A libpq URL of ``database`` on this cluster (loopback TCP)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create ``name`` and return its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def server_log(self) -> str:
        """The server's log so far."""
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""


def wait_accepting(url: str, timeout: float = 30.0) -> None:
    """Wait until ``url`` accepts a query."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def private_pg() -> Iterator[PrivateCluster]:
    """A running private cluster, removed after the test."""
    bindir = find_bindir()
    if bindir is None:
        reason = "no PostgreSQL server binaries (initdb, pg_ctl) are installed"
        if in_ci():
            pytest.fail(f"{reason} (CI=true: the outage scenarios must run)", pytrace=False)
        pytest.skip(reason)
    cluster = PrivateCluster(bindir)
    try:
        cluster.init()
        cluster.start()
        wait_accepting(cluster.url())
        yield cluster
    finally:
        cluster.destroy()
