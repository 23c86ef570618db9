"""Helper processes of the multi-process scenarios: ``python -m bench.proc ROLE SPEC_JSON``.

Roles:

* ``stalwart_recovery`` / ``dbos_recovery``: a worker of the recovery scenario (phase
  ``first`` is killed with SIGKILL half-way; phase ``restart`` finishes the workflow).
* ``stalwart_scale``: a Stalwart worker process of the scale scenario (until SIGTERM).
* ``dbos_replay_build`` / ``dbos_replay_recover``: DBOS's side of the replay scenario.

Only the side a role needs is imported, after the process's start time was taken.
"""

from __future__ import annotations

import time

T_PROC = time.time()  # before the heavy imports: the process's own start

import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """The environment for a benchmark process: the repository on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def spawn(role: str, spec: dict[str, Any], cwd: str, log_name: str) -> subprocess.Popen[bytes]:
    """Start a helper process; its output goes to ``<cwd>/<log_name>.log``."""
    log = open(os.path.join(cwd, f"{log_name}.log"), "wb")  # noqa: SIM115 - owned by the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.proc", role, json.dumps(spec)],
            cwd=cwd,
            env=child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    finally:
        log.close()


def log_tail(cwd: str, log_name: str, lines: int = 12) -> str:
    """The end of a helper's log (for error messages)."""
    try:
        text = Path(cwd, f"{log_name}.log").read_text("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def read_result(path: str) -> dict[str, Any] | None:
    """The JSON a helper wrote, or None when it wrote nothing."""
    try:
        with open(path, encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
    except (OSError, ValueError):
        return None
    return data


def main(argv: list[str]) -> int:
    """Run one helper role."""
    role, spec = argv[0], json.loads(argv[1])
    if role == "stalwart_recovery":
        from bench import stalwart_side

        asyncio.run(stalwart_side.recovery_worker(spec, T_PROC))
    elif role == "stalwart_scale":
        from bench import stalwart_side

        asyncio.run(stalwart_side.scale_worker(spec, T_PROC))
    elif role == "dbos_recovery":
        from bench import dbos_side

        asyncio.run(dbos_side.recovery_worker(spec, T_PROC))
    elif role == "dbos_replay_build":
        from bench import dbos_side

        asyncio.run(dbos_side.replay_build(spec))
    elif role == "dbos_replay_recover":
        from bench import dbos_side

        asyncio.run(dbos_side.replay_recover(spec))
    else:
        raise SystemExit(f"unknown role {role!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
