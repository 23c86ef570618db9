"""End-to-end: the operator commands (query, update, fork, bulk, check-compat, filters)."""

from __future__ import annotations

from tests.e2e.conftest import Cli, WorkerProcess


def test_query_update_and_search(cli: Cli, worker: WorkerProcess) -> None:
    cli.run("start", "counter", "--input", "[10]", "--id", "ops-c1")
    cli.run("start", "counter", "--input", "[99]", "--id", "ops-c2")
    cli.wait_status("ops-c1", "running")
    assert cli.json("update", "ops-c1", "add", "[5]") == 15
    bad = cli.run("update", "ops-c1", "add", "[-1]", expect=None)
    assert bad.returncode != 0 and "step must be positive" in bad.stderr
    assert cli.json("query", "ops-c1", "value") == 15
    found = cli.json("list", "--search", "kind=counter", "--search", "start=10")
    assert [item["id"] for item in found["items"]] == ["ops-c1"]
    assert cli.json("describe", "ops-c1")["search_attributes"] == {"kind": "counter", "start": 10}
    for instance_id in ("ops-c1", "ops-c2"):
        cli.run("signal", instance_id, "stop", "null")
        cli.wait_status(instance_id, "completed")


def test_fork_bulk_and_check_compat(cli: Cli, worker: WorkerProcess) -> None:
    cli.run("start", "double", "--input", "[21]", "--id", "ops-d1")
    cli.wait_status("ops-d1", "completed")
    forked = cli.json("fork", "ops-d1", "--from-step", "0", "--id", "ops-d1-fork")
    assert forked["id"] == "ops-d1-fork"
    cli.wait_status("ops-d1-fork", "completed")

    for i in range(3):
        cli.run("start", "wait_for_go", "--input", f'["b{i}"]', "--id", f"ops-bulk-{i}")
    for i in range(3):
        cli.wait_status(f"ops-bulk-{i}", "running")
    compat = cli.run("check-compat", "--name", "wait_for_go")
    assert "3 of 3 in-flight instance(s) replay" in compat.stdout
    cancelled = cli.json("bulk", "cancel", "--name", "wait_for_go", "--reason", "cleanup")
    assert sorted(cancelled["ids"]) == ["ops-bulk-0", "ops-bulk-1", "ops-bulk-2"]
    for i in range(3):
        cli.wait_status(f"ops-bulk-{i}", "cancelled")
    since = cli.json("list", "--name", "double", "--since", "2000-01-01", "--version", "1")
    assert {item["id"] for item in since["items"]} >= {"ops-d1", "ops-d1-fork"}
    assert cli.json("list", "--name", "double", "--until", "2000-01-01")["items"] == []
    bad = cli.run("list", "--since", "yesterday", expect=2)
    assert "ISO 8601" in bad.stderr
