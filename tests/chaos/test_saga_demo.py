"""``make demo-saga`` works: the demo runs, kills its worker mid-rollback and exits 0."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .support import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def test_saga_demo_exits_0_with_every_invariant_holding() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "examples.saga_demo"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SIGKILL" in proc.stdout and "mid-rollback" in proc.stdout
    assert "FAIL" not in proc.stdout
    assert proc.stdout.count("PASS") >= 10
