"""End-to-end tests of ``stalwart lint``: a real subprocess over files in a temporary tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0

BAD = textwrap.dedent(
    """\
    import time
    import uuid as u
    from stalwart import WorkflowContext, workflow


    @workflow
    async def charge(ctx: WorkflowContext) -> str:
        started = time.time()
        await ctx.sleep(1)
        return f"{u.uuid4()}-{started}"  # the uuid is flagged, not the f-string
    """
)
GOOD = textwrap.dedent(
    """\
    import asyncio
    import time
    from stalwart import WorkflowContext, activity, workflow


    @activity
    def slow() -> float:
        time.sleep(0.1)
        return time.time()


    @workflow
    async def fine(ctx: WorkflowContext) -> str:
        await asyncio.sleep(1)
        stamp = time.time()  # stalwart: ignore[SW001]
        return f"{ctx.now()} {ctx.uuid()} {ctx.random().random()} {await slow()} {stamp}"
    """
)


def run(cwd: Path, *args: str, expect: int) -> subprocess.CompletedProcess[str]:
    """Run ``python -m stalwart.cli lint ARGS`` in ``cwd`` with no STALWART_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALWART_")}
    # An unusable store URL: the command must not open (or need) a database.
    env["STALWART_DB"] = f"sqlite:///{cwd / 'no-such-dir' / 'never.db'}"
    env["STALWART_APP"] = "no_such_module_anywhere:engine"
    proc = subprocess.run(
        [sys.executable, "-m", "stalwart.cli", "lint", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == expect, (
        f"lint {' '.join(args)} exited {proc.returncode}, expected {expect}\n"
        f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
    )
    return proc


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``app/bad.py`` (two findings), ``app/jobs/good.py`` (none), ``app/broken.py``."""
    app = tmp_path / "app"
    (app / "jobs").mkdir(parents=True)
    (app / "bad.py").write_text(BAD)
    (app / "jobs" / "good.py").write_text(GOOD)
    (app / "broken.py").write_text("def broken(:\n    pass\n")
    return tmp_path


def test_findings_are_printed_like_ruff_and_exit_1(tree: Path) -> None:
    proc = run(tree, "app", expect=1)
    assert proc.stdout.splitlines() == [
        "app/bad.py:8:15: SW001 time.time() reads the clock, which differs on replay; "
        "use ctx.now()",
        "app/bad.py:10:15: SW003 uuid.uuid4() gives a new id, which differs on replay; "
        "use ctx.uuid()",
        "app/broken.py:1:12: SW000 syntax error: invalid syntax; the file was not checked",
        "Found 3 problems in 2 files (3 files checked).",
    ]
    assert proc.stderr == ""
    assert not (tree / "no-such-dir").exists()


def test_clean_files_exit_0(tree: Path) -> None:
    proc = run(tree, "app/jobs", "app/jobs/good.py", expect=0)
    assert proc.stdout == "No determinism problems found in 1 file.\n"
    assert proc.stderr == ""


def test_json_output(tree: Path) -> None:
    found = json.loads(run(tree, "--json", "app/bad.py", expect=1).stdout)
    assert found == [
        {
            "path": "app/bad.py",
            "line": 8,
            "col": 15,
            "code": "SW001",
            "message": "time.time() reads the clock, which differs on replay; use ctx.now()",
        },
        {
            "path": "app/bad.py",
            "line": 10,
            "col": 15,
            "code": "SW003",
            "message": "uuid.uuid4() gives a new id, which differs on replay; use ctx.uuid()",
        },
    ]
    assert json.loads(run(tree, "app/jobs", "--json", expect=0).stdout) == []


def test_a_missing_path_is_a_usage_error(tree: Path) -> None:
    proc = run(tree, "app", "nowhere", expect=2)
    assert proc.stdout == ""
    assert proc.stderr.strip() == "error: no such file or directory: nowhere"


def test_paths_are_required(tree: Path) -> None:
    proc = run(tree, expect=2)
    assert "Missing argument" in proc.stderr


def test_the_repository_examples_are_clean() -> None:
    proc = run(REPO, "examples", expect=0)
    assert proc.stdout.startswith("No determinism problems found in ")
