"""End-to-end tests of the ``stalwart`` command line against a real SQLite file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from stalwart._engine.events import event_from_data

if TYPE_CHECKING:
    from conftest import Cli, SpawnWorker, WorkerProcess

MAX_COLUMNS = 100


def assert_narrow(text: str) -> None:
    """Tables fit a 100-column terminal."""
    for line in text.splitlines():
        assert len(line.rstrip()) <= MAX_COLUMNS, line


def assert_one_line_error(stderr: str, fragment: str) -> None:
    """Expected errors are a single ``error: ...`` line, never a traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert fragment in lines[0], stderr


def test_start_is_completed_by_the_worker(cli: Cli, worker: WorkerProcess) -> None:
    started = cli.run("start", "double", "--input", "21", "--id", "d-1")
    assert started.stdout.strip() == "d-1"

    # Same id and same input (a list this time): idempotent; --wait prints the result.
    waited = cli.run(
        "start", "double", "--input", "[21]", "--id", "d-1", "--wait", "--timeout", "30"
    )
    assert waited.stdout.splitlines() == ["d-1", "42"]
    assert cli.json("start", "double", "-i", "[21]", "--id", "d-1", "--wait") == {
        "id": "d-1",
        "status": "completed",
        "result": 42,
    }
    assert cli.run("status", "d-1").stdout.strip() == "completed"
    assert cli.json("status", "d-1") == {"id": "d-1", "status": "completed"}

    generated = cli.json("start", "double", "--input", "[1]")
    assert len(generated["id"]) >= 16
    cli.wait_status(generated["id"], "completed")


def test_idempotent_and_conflicting_start(cli: Cli) -> None:
    first = cli.run("start", "double", "--input", "[5]", "--id", "same")
    again = cli.run("start", "double", "--input", "5", "--id", "same")
    assert first.stdout == again.stdout == "same\n"

    conflict = cli.run("start", "double", "--input", "[6]", "--id", "same", expect=5)
    assert_one_line_error(conflict.stderr, "already exists")
    other_name = cli.run("start", "wait_for_go", "--input", '["x"]', "--id", "same", expect=5)
    assert_one_line_error(other_name.stderr, "'double' workflow")


def test_signal_is_delivered(cli: Cli, worker: WorkerProcess) -> None:
    cli.run("start", "wait_for_go", "--input", '"hello"', "--id", "g-sig")
    sent = cli.run("signal", "g-sig", "go", '{"n": 1, "tags": ["a"]}')
    assert sent.stdout.strip() == "signal 'go' sent to 'g-sig'"
    result = cli.json("start", "wait_for_go", "-i", '["hello"]', "--id", "g-sig", "--wait")
    assert result["result"] == {"label": "HELLO", "payload": {"n": 1, "tags": ["a"]}}

    closed = cli.run("signal", "g-sig", "go", "1", expect=4)
    assert_one_line_error(closed.stderr, "already completed")
    assert cli.run("signal", "g-sig", "go", "--json", expect=4).stdout == ""


def test_describe_list_history_tables_and_json(cli: Cli, worker: WorkerProcess) -> None:
    cli.run("start", "wait_for_go", "--input", '["insp"]', "--id", "g-insp")
    cli.run("signal", "g-insp", "go", '{"ok": true}', "--json")
    cli.wait_status("g-insp", "completed")

    table = cli.run("describe", "g-insp").stdout
    assert_narrow(table)
    for fragment in ("g-insp", "wait_for_go", "completed", "history length", "run id"):
        assert fragment in table
    desc = cli.json("describe", "g-insp")
    assert desc["id"] == "g-insp"
    assert desc["name"] == "wait_for_go"
    assert desc["version"] == 1
    assert desc["status"] == "completed"
    assert desc["error"] is None
    assert desc["history_length"] >= 5
    assert desc["created_at"] <= desc["updated_at"]

    listing = cli.run("list").stdout
    assert_narrow(listing)
    assert "g-insp" in listing
    assert "STATUS" in listing
    page = cli.json("list", "--name", "wait_for_go", "--status", "completed")
    assert "g-insp" in [item["id"] for item in page["items"]]
    assert {item["name"] for item in page["items"]} == {"wait_for_go"}
    assert {item["status"] for item in page["items"]} == {"completed"}

    history = cli.run("history", "g-insp").stdout
    assert_narrow(history)
    for kind in ("WorkflowStarted", "ActivityCompleted", "SignalReceived", "WorkflowCompleted"):
        assert kind in history
    events = cli.json("history", "g-insp")
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "WorkflowStarted"
    assert events[-1] | {"time": 0} == {
        "seq": len(events) - 1,
        "time": 0,
        "type": "WorkflowCompleted",
        "result": {"label": "INSP", "payload": {"ok": True}},
    }
    # The JSON history is complete enough to rebuild every event (for a replayer).
    for item in events:
        fields = {k: v for k, v in item.items() if k not in ("seq", "time", "type")}
        assert event_from_data(item["type"], fields).to_data() == fields


def test_list_paging(cli: Cli) -> None:
    for n in range(3):
        cli.run("start", "double", "--input", f"[{n}]", "--id", f"page-{n}")
    first = cli.json("list", "--name", "double", "--limit", "2")
    assert len(first["items"]) == 2
    assert first["next_cursor"]
    second = cli.json("list", "--name", "double", "--limit", "2", "--cursor", first["next_cursor"])
    ids = [i["id"] for i in first["items"]] + [i["id"] for i in second["items"]]
    assert len(ids) == len(set(ids))
    table = cli.run("list", "--name", "double", "--limit", "2").stdout
    assert f"--cursor {first['next_cursor']}" in table
    assert "no workflow instances" in cli.run("list", "--name", "nothing-by-this-name").stdout


def test_cancel(cli: Cli, worker: WorkerProcess) -> None:
    cli.run("start", "wait_for_go", "--input", '["c"]', "--id", "g-cancel")
    out = cli.run("cancel", "g-cancel", "--reason", "no longer needed")
    assert "cancellation requested" in out.stdout
    cli.wait_status("g-cancel", "cancelled")
    events = cli.json("history", "g-cancel")
    assert {"CancelRequested", "WorkflowCancelled"} <= {e["type"] for e in events}
    assert cli.json("describe", "g-cancel")["status"] == "cancelled"
    # Cancelling an instance that already ended does nothing.
    assert cli.json("cancel", "g-cancel") == {
        "id": "g-cancel",
        "action": "cancel",
        "status": "cancelled",
    }
    listed = cli.json("list", "--status", "cancelled")
    assert "g-cancel" in [i["id"] for i in listed["items"]]


def test_terminate(cli: Cli) -> None:
    cli.run("start", "wait_for_go", "--input", '["t"]', "--id", "g-term")
    slow = cli.run(
        "start",
        "wait_for_go",
        "-i",
        '["t"]',
        "--id",
        "g-term",
        "--wait",
        "--timeout",
        "0.3",
        expect=1,
    )
    assert slow.stdout == "g-term\n"
    assert_one_line_error(slow.stderr, "timed out after 0.3s waiting for 'g-term'")
    assert cli.json("terminate", "g-term", "--reason", "operator") == {
        "id": "g-term",
        "action": "terminate",
        "status": "terminated",
    }
    assert cli.run("status", "g-term").stdout.strip() == "terminated"
    last = cli.json("history", "g-term")[-1]
    assert last["type"] == "WorkflowTerminated"
    assert last["reason"] == "operator"
    waited = cli.run("start", "wait_for_go", "-i", '["t"]', "--id", "g-term", "--wait", expect=1)
    assert_one_line_error(waited.stderr, "terminated")
    assert "terminate requested" in cli.run("terminate", "g-term").stdout


def test_resume_of_a_non_suspended_instance(cli: Cli) -> None:
    cli.run("start", "double", "--input", "[7]", "--id", "d-resume")
    out = cli.run("resume", "d-resume")
    assert "not suspended" in out.stdout
    data = cli.json("resume", "d-resume")
    assert data["id"] == "d-resume"
    assert data["resumed"] is False


@pytest.mark.parametrize(
    "args",
    [
        ["status", "nope"],
        ["describe", "nope"],
        ["history", "nope"],
        ["signal", "nope", "go", "{}"],
        ["cancel", "nope"],
        ["terminate", "nope"],
        ["resume", "nope"],
    ],
)
def test_unknown_id_exits_3(cli: Cli, args: list[str]) -> None:
    proc = cli.run(*args, expect=3)
    assert_one_line_error(proc.stderr, "no workflow instance with id 'nope'")
    assert proc.stdout == ""


def test_bad_input_exits_2(cli: Cli) -> None:
    bad = cli.run("start", "double", "--input", "{bad", expect=2)
    assert_one_line_error(bad.stderr, "invalid JSON for --input")
    not_json = cli.run("start", "double", "--input", "[NaN]", expect=2)
    assert_one_line_error(not_json.stderr, "NaN is not valid JSON")
    bad_payload = cli.run("signal", "whatever", "go", "[1,", expect=2)
    assert_one_line_error(bad_payload.stderr, "invalid JSON for the signal payload")
    # The app is loaded, so arguments are checked against the parameter types.
    wrong_type = cli.run("start", "double", "--input", '["abc"]', expect=2)
    assert_one_line_error(wrong_type.stderr, "double(x)")
    bad_status = cli.run("list", "--status", "bogus", expect=2)
    assert_one_line_error(bad_status.stderr, "unknown status 'bogus'")
    bad_cursor = cli.run("list", "--cursor", "!!!", expect=2)
    assert_one_line_error(bad_cursor.stderr, "cursor")
    bad_id = cli.run("start", "double", "-i", "1", "--id", " ", expect=2)
    assert_one_line_error(bad_id.stderr, "must not be empty")


def test_app_errors_exit_2(cli: Cli) -> None:
    missing = cli.run("list", "--app", "no_such_module_xyz", expect=2)
    assert_one_line_error(missing.stderr, "cannot import app module 'no_such_module_xyz'")
    no_attr = cli.run("list", "--app", "cli_app:nothing", expect=2)
    assert_one_line_error(no_attr.stderr, "has no attribute 'nothing'")
    not_engine = cli.run("worker", "cli_app:double", expect=2)
    assert_one_line_error(not_engine.stderr, "not a stalwart.Engine")


def test_db_option_overrides_the_app_engine(cli: Cli, workdir: Path) -> None:
    other = f"sqlite:///{workdir / 'other.db'}"
    cli.run("start", "double", "--input", "[3]", "--id", "only-in-other", "--db", other)
    assert [i["id"] for i in cli.json("list", "--db", other)["items"]] == ["only-in-other"]
    env_cli = cli.with_env(STALWART_DB=other)
    assert env_cli.json("status", "only-in-other")["status"] == "pending"
    cli.run("status", "only-in-other", expect=3)


def test_worker_script_with_overrides_stops_on_sigterm(
    cli: Cli, workdir: Path, spawn_worker: SpawnWorker
) -> None:
    script = Path(sys.executable).with_name("stalwart")
    if not script.exists():
        pytest.skip("the stalwart console script is not installed")
    db = f"sqlite:///{workdir / 'script.db'}"
    # The console script (unlike ``python -m``) relies on the CLI adding the current
    # directory to sys.path to find cli_app.
    script_cli = cli.with_command(str(script))
    proc = spawn_worker(
        script_cli,
        "script-worker.log",
        "cli_app:engine",
        "--db",
        db,
        "--name",
        "scripted",
        "--lease-seconds",
        "5",
        "--json",
    )
    try:
        proc.wait_ready()
        done = script_cli.json(
            "start", "double", "-i", "50", "--db", db, "--wait", "--timeout", "30"
        )
        assert done["result"] == 100
        listed = script_cli.json("list", "--db", db)["items"]
        assert [(i["name"], i["status"]) for i in listed] == [("double", "completed")]
    finally:
        code = proc.stop()
    assert code == 0, proc.output()
    records = [json.loads(line) for line in proc.output().splitlines() if line.strip()]
    assert records[0]["message"].startswith("worker scripted-")
    assert records[-1]["message"] == "worker stopped"
