"""The determinism linter (``stalwart.lint``): rules, aliases, scopes, suppressions, files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from stalwart.lint import CODES, Finding, lint_file, lint_paths, lint_source, python_files, summary


def in_workflow(body: str, imports: str = "") -> str:
    """A module with ``imports`` and a workflow whose body is ``body``."""
    return (
        f"{textwrap.dedent(imports).strip()}\n"
        "from stalwart import WorkflowContext, workflow\n\n\n"
        "@workflow\n"
        "async def wf(ctx: WorkflowContext, xs: list[int]) -> object:\n"
        f"{textwrap.indent(textwrap.dedent(body).strip(), '    ')}\n"
        "    return None\n"
    )


FIRST = 7
"""The line of the first statement of an :func:`in_workflow` body (with one import line)."""


def lint(source: str) -> list[Finding]:
    """Findings in dedented source."""
    return lint_source(textwrap.dedent(source), "mod.py")


def codes(source: str) -> list[str]:
    """The codes found in dedented source, in order."""
    return [f.code for f in lint(source)]


# ----------------------------------------------------------------------------- every rule
FLAGGED = [
    # SW001: the clock and blocking sleeps.
    ("import datetime", "datetime.datetime.now()", "SW001", "datetime.datetime.now()"),
    ("from datetime import datetime", "datetime.utcnow()", "SW001", "ctx.now()"),
    ("from datetime import datetime", "datetime.today()", "SW001", "datetime.datetime.today()"),
    ("from datetime import date", "date.today()", "SW001", "datetime.date.today()"),
    ("import time", "time.time()", "SW001", "time.time() reads the clock"),
    ("import time", "time.time_ns()", "SW001", "use ctx.now()"),
    ("import time", "time.monotonic()", "SW001", "time.monotonic()"),
    ("import time", "time.perf_counter()", "SW001", "time.perf_counter()"),
    ("import time", "time.localtime()", "SW001", "time.localtime()"),
    ("import time", "time.strftime('%Y')", "SW001", "time.strftime()"),
    ("import time", "time.sleep(1)", "SW001", "use await ctx.sleep()"),
    # SW002: randomness.
    ("import random", "random.random()", "SW002", "use ctx.random()"),
    ("import random", "random.randint(1, 6)", "SW002", "random.randint()"),
    ("import random", "random.choice(xs)", "SW002", "random.choice()"),
    ("import random", "random.shuffle(xs)", "SW002", "random.shuffle()"),
    ("import random", "random.Random()", "SW002", "random.Random() without a seed"),
    ("import random", "random.Random(None)", "SW002", "without a seed"),
    ("import random", "random.SystemRandom()", "SW002", "random.SystemRandom()"),
    ("import secrets", "secrets.token_hex(8)", "SW002", "generate secrets in an activity"),
    ("import secrets", "secrets.choice('ab')", "SW002", "secrets.choice()"),
    ("import os", "os.urandom(8)", "SW002", "os.urandom()"),
    # SW003: UUIDs.
    ("import uuid", "uuid.uuid4()", "SW003", "uuid.uuid4() gives a new id"),
    ("import uuid", "uuid.uuid1()", "SW003", "use ctx.uuid()"),
    # SW004: the environment.
    ("import os", "os.environ['HOME']", "SW004", "os.environ reads the environment"),
    ("import os", "os.environ.get('HOME')", "SW004", "read it in an activity"),
    ("import os", "os.getenv('HOME')", "SW004", "os.getenv()"),
    ("from os import environ", "environ['HOME']", "SW004", "os.environ"),
    ("from os import getenv", "getenv('HOME')", "SW004", "os.getenv()"),
    # SW005: I/O.
    ("", "open('data.txt')", "SW005", "open() does I/O"),
    ("import requests", "requests.get('http://x')", "SW005", "requests.get()"),
    ("import requests", "requests.Session().get('http://x')", "SW005", "requests.Session()"),
    ("import httpx", "httpx.AsyncClient()", "SW005", "use an activity"),
    ("import urllib.request", "urllib.request.urlopen('http://x')", "SW005", "urlopen()"),
    ("import socket", "socket.create_connection(('x', 1))", "SW005", "socket."),
    ("import subprocess", "subprocess.run(['ls'])", "SW005", "subprocess.run()"),
    ("import sqlite3", "sqlite3.connect('x.db')", "SW005", "sqlite3.connect()"),
    # SW006: threads and executors.
    ("import asyncio", "asyncio.to_thread(print)", "SW006", "asyncio.to_thread()"),
    (
        "import asyncio",
        "asyncio.get_running_loop().run_in_executor(None, print)",
        "SW006",
        ".run_in_executor()",
    ),
    ("import threading", "threading.Thread(target=print)", "SW006", "use an activity"),
    (
        "from concurrent.futures import ThreadPoolExecutor",
        "ThreadPoolExecutor()",
        "SW006",
        "concurrent.futures.ThreadPoolExecutor()",
    ),
]


@pytest.mark.parametrize(("imports", "statement", "code", "fragment"), FLAGGED)
def test_each_rule_is_flagged(imports: str, statement: str, code: str, fragment: str) -> None:
    [finding] = lint_source(in_workflow(f"x = {statement}", imports), "mod.py")
    assert finding.code == code
    assert fragment in finding.message
    assert finding.line == FIRST
    assert finding.col == len("    x = ") + 1


def test_membership_in_the_environment_is_flagged() -> None:
    [finding] = lint_source(in_workflow("x = 'HOME' in os.environ", "import os"), "m.py")
    assert (finding.code, finding.col) == ("SW004", len("    x = 'HOME' in ") + 1)


def test_every_code_is_exercised_and_documented() -> None:
    assert {code for _, _, code, _ in FLAGGED} | {"SW000"} == set(CODES)


def test_messages_say_what_to_use_instead() -> None:
    instead = {
        "time.time()": "ctx.now()",
        "random.random()": "ctx.random()",
        "uuid.uuid4()": "ctx.uuid()",
        "time.sleep(1)": "ctx.sleep()",
        "open('f')": "an activity",
        "os.getenv('X')": "an activity",
        "asyncio.to_thread(print)": "an activity",
    }
    for statement, advice in instead.items():
        [finding] = lint_source(
            in_workflow(statement, "import asyncio, os, random, time, uuid"), "m.py"
        )
        assert advice in finding.message, finding


ALLOWED = [
    ("import asyncio", "await asyncio.sleep(1)"),
    ("import asyncio", "await asyncio.gather(asyncio.sleep(0))"),
    ("", "print('hello')"),
    ("", "ctx.now()"),
    ("", "ctx.random().randint(1, 6)"),
    ("", "ctx.uuid()"),
    ("", "await ctx.sleep(1)"),
    ("import random", "random.Random(42)"),
    ("import random", "random.Random(x=xs[0])"),
    ("import uuid", "uuid.uuid5(uuid.NAMESPACE_DNS, 'example.com')"),
    ("import uuid", "uuid.UUID(int=1)"),
    ("import datetime", "datetime.datetime(2024, 1, 1) + datetime.timedelta(days=1)"),
    ("from datetime import datetime", "datetime.fromisoformat('2024-01-01')"),
    ("import time", "time.localtime(0)"),
    ("import time", "time.strftime('%Y', time.gmtime(0))"),
    ("import secrets", "secrets.compare_digest('a', 'b')"),
    ("import os", "os.path.join('a', 'b')"),
    ("import subprocess", "subprocess.PIPE"),
    ("import threading", "lock = threading.Lock()"),
    ("import threading", "t: threading.Thread | None = None"),
    ("import random", "rng: random.Random = ctx.random()"),
]


@pytest.mark.parametrize(("imports", "statement"), ALLOWED)
def test_deterministic_code_is_not_flagged(imports: str, statement: str) -> None:
    assert lint_source(in_workflow(statement, imports), "mod.py") == []


def test_exceptions_of_io_modules_are_not_flagged() -> None:
    source = in_workflow(
        """
        try:
            pass
        except (subprocess.CalledProcessError, requests.HTTPError):
            raise subprocess.SubprocessError("boom")
        """,
        "import requests, subprocess",
    )
    assert lint_source(source, "mod.py") == []


def test_references_to_flagged_functions_are_flagged() -> None:
    source = in_workflow(
        """
        ordered = sorted(xs, key=lambda _: random.random())
        clock = time.time
        await asyncio.to_thread(time.sleep, 1)
        """,
        "import asyncio, random, time",
    )
    found = [(f.line, f.code, f.message.split()[0]) for f in lint_source(source, "m.py")]
    assert found == [
        (FIRST, "SW002", "random.random()"),
        (FIRST + 1, "SW001", "time.time"),
        (FIRST + 2, "SW006", "asyncio.to_thread()"),
        (FIRST + 2, "SW001", "time.sleep"),
    ]


# ----------------------------------------------------------------------------- aliases
@pytest.mark.parametrize(
    ("imports", "statement", "name"),
    [
        ("import datetime as dt", "dt.datetime.now()", "datetime.datetime.now()"),
        ("from datetime import datetime as DT", "DT.now()", "datetime.datetime.now()"),
        ("from time import time", "time()", "time.time()"),
        ("from time import time as clock", "clock()", "time.time()"),
        ("from time import sleep", "sleep(1)", "time.sleep()"),
        ("import random as rnd", "rnd.randint(1, 2)", "random.randint()"),
        ("from random import choice", "choice(xs)", "random.choice()"),
        ("from uuid import uuid4", "uuid4()", "uuid.uuid4()"),
        ("from os import environ as env", "env['X']", "os.environ"),
        ("import os.path", "os.getenv('X')", "os.getenv()"),
        ("from urllib import request", "request.urlopen('u')", "urllib.request.urlopen()"),
        ("import subprocess as sp", "sp.check_output(['ls'])", "subprocess.check_output()"),
        ("from threading import Thread", "Thread(target=print)", "threading.Thread()"),
    ],
)
def test_import_aliases_are_resolved(imports: str, statement: str, name: str) -> None:
    [finding] = lint_source(in_workflow(statement, imports), "mod.py")
    assert finding.message.startswith(f"{name} ")


def test_imports_inside_functions_are_resolved() -> None:
    source = """
    from stalwart import workflow

    def make():
        import time as t

        @workflow
        async def inner(ctx):
            import uuid as u
            return t.time(), u.uuid4()

        return inner
    """
    assert codes(source) == ["SW001", "SW003"]


def test_local_names_shadow_imported_modules() -> None:
    source = """
    import random
    import time
    from stalwart import workflow

    @workflow
    async def wf(ctx, time):
        random = ctx.random()
        return random.randint(1, 6), time.time(), [random.random() for random in [ctx]]
    """
    assert codes(source) == []


def test_a_fallback_import_still_counts() -> None:
    source = """
    try:
        import requests
    except ImportError:
        requests = None
    from stalwart import workflow

    @workflow
    async def wf(ctx):
        return requests.get("http://x")
    """
    assert codes(source) == ["SW005"]


def test_a_local_function_named_like_a_builtin_is_not_flagged() -> None:
    source = """
    from stalwart import workflow

    def open(name):
        return name

    @workflow
    async def wf(ctx, input):
        return open("x"), input
    """
    assert codes(source) == []


# ----------------------------------------------------------------------------- workflows
@pytest.mark.parametrize(
    ("imports", "decorator"),
    [
        ("from stalwart import workflow", "@workflow"),
        ("from stalwart import workflow", "@workflow(name='w', version=2)"),
        ("import stalwart", "@stalwart.workflow"),
        ("import stalwart", "@stalwart.workflow(name='w')"),
        ("import stalwart as sw", "@sw.workflow"),
        ("from stalwart import workflow as wf", "@wf"),
        ("from stalwart import workflow as wf", "@wf(timeout=10)"),
        ("from stalwart.decorators import workflow as durable", "@durable"),
        ("from somewhere import *", "@workflow"),
    ],
)
def test_workflow_decorators_are_recognised(imports: str, decorator: str) -> None:
    source = f"""
    import time
    {imports}

    {decorator}
    async def w(ctx):
        return time.time()
    """
    assert codes(source) == ["SW001"]


@pytest.mark.parametrize(
    ("imports", "decorator"),
    [
        ("from stalwart import activity", "@activity"),
        ("from stalwart import activity", "@activity(name='a', retry=None)"),
        ("import stalwart", "@stalwart.activity"),
        ("from stalwart import activity as act", "@act"),
        ("import functools", "@functools.cache"),
        ("import other", "@other.workflow"),
        ("", ""),
    ],
)
def test_activities_and_plain_functions_are_not_checked(imports: str, decorator: str) -> None:
    source = f"""
    import os, random, time, uuid
    {imports}

    {decorator}
    async def f(ctx):
        return time.time(), random.random(), uuid.uuid4(), os.environ, open("f")
    """
    assert codes(source) == []


def test_module_level_code_is_not_checked() -> None:
    source = """
    import os, time
    from stalwart import workflow

    STARTED = time.time()
    LEDGER = os.environ.get("LEDGER")

    @workflow
    async def wf(ctx):
        return STARTED
    """
    assert codes(source) == []


def test_decorator_arguments_and_defaults_of_a_workflow_are_not_checked() -> None:
    source = """
    import os, time
    from stalwart import workflow

    @workflow(name=os.environ.get("NAME", "w"))
    async def wf(ctx, at=time.time()):
        def later(when=time.time()):
            return when
        return later()
    """
    found = lint(source)
    assert [(f.line, f.code) for f in found] == [(7, "SW001")]


def test_workflow_methods_and_workflows_defined_in_functions_are_checked() -> None:
    source = """
    import time
    from stalwart import workflow

    class Holder:
        @workflow
        async def run(self, ctx):
            return time.time()

    def test_something():
        @workflow(name="inner")
        async def inner(ctx):
            return time.time()
    """
    assert [f.line for f in lint(source)] == [8, 13]


def test_sync_workflow_functions_are_checked_too() -> None:
    source = """
    import time
    from stalwart import workflow

    @workflow
    def w(ctx):
        return time.time()
    """
    assert codes(source) == ["SW001"]


# ----------------------------------------------------------------------------- nesting
def test_nested_functions_lambdas_classes_and_comprehensions_are_checked() -> None:
    source = in_workflow(
        """
        def helper():
            return time.time()

        async def more():
            return uuid.uuid4()

        pick = lambda: random.random()

        @ctx.signal_handler("go")
        def on_go(payload):
            os.getenv("X")

        class Local:
            def method(self):
                return open("f")

        ids = [uuid.uuid1() for _ in xs]
        """,
        "import os, random, time, uuid",
    )
    found = [(f.line, f.code) for f in lint_source(source, "mod.py")]
    assert found == [
        (FIRST + 1, "SW001"),
        (FIRST + 4, "SW003"),
        (FIRST + 6, "SW002"),
        (FIRST + 10, "SW004"),
        (FIRST + 14, "SW005"),
        (FIRST + 16, "SW003"),
    ]


def test_side_effect_functions_are_not_checked() -> None:
    source = in_workflow(
        """
        def stamp() -> float:
            return time.time()

        a = ctx.side_effect(stamp)
        b = ctx.side_effect(lambda: random.random())
        c = ctx.side_effect(fn=uuid.uuid4, type=str)
        d = ctx.side_effect(lambda: 1, type=time.time())
        """,
        "import random, time, uuid",
    )
    found = [(f.line, f.code) for f in lint_source(source, "mod.py")]
    assert found == [(FIRST + 6, "SW001")]  # only the type= argument, which is not recorded


def test_nested_activities_are_not_checked() -> None:
    source = in_workflow(
        """
        @activity
        async def fetch() -> str:
            return open("f").read()

        return await fetch()
        """,
        "from stalwart import activity",
    )
    assert lint_source(source, "mod.py") == []


# ----------------------------------------------------------------------------- suppressions
def test_ignore_comment_suppresses_every_code_on_its_line() -> None:
    source = in_workflow(
        """
        a = (time.time(), random.random())  # stalwart: ignore
        b = time.time()
        """,
        "import random, time",
    )
    assert [(f.line, f.code) for f in lint_source(source, "m.py")] == [(FIRST + 1, "SW001")]


def test_ignore_comment_with_codes_suppresses_only_those() -> None:
    source = in_workflow(
        """
        a = (time.time(), random.random())  # stalwart: ignore[SW001]
        b = (time.time(), random.random())  # stalwart: ignore[SW001, SW002]
        c = (time.time(), uuid.uuid4())  # noqa: E501  # stalwart: ignore[sw003]
        d = time.time()  # stalwart: ignore[SW005]
        """,
        "import random, time, uuid",
    )
    found = [(f.line, f.code) for f in lint_source(source, "m.py")]
    assert found == [(FIRST, "SW002"), (FIRST + 2, "SW001"), (FIRST + 3, "SW001")]


def test_ignore_text_inside_a_string_does_not_suppress() -> None:
    source = in_workflow("x = ('# stalwart: ignore', time.time())", "import time")
    assert [f.code for f in lint_source(source, "m.py")] == ["SW001"]


# ----------------------------------------------------------------------------- results
def test_syntax_errors_are_a_finding_not_a_crash() -> None:
    [finding] = lint_source("x = 1\ndef broken(:\n    pass\n", "bad.py")
    assert finding.code == "SW000"
    assert (finding.path, finding.line) == ("bad.py", 2)
    assert finding.message.startswith("syntax error: ")
    assert "not checked" in finding.message


def test_null_bytes_are_a_finding_not_a_crash() -> None:
    [finding] = lint_source("x = 1\0\n", "nul.py")
    assert finding.code == "SW000"


def test_undecodable_files_are_a_finding(tmp_path: Path) -> None:
    path = tmp_path / "latin.py"
    path.write_bytes(b"x = '\xe9'\n")
    [finding] = lint_file(path)
    assert (finding.code, finding.path, finding.line) == ("SW000", str(path), 1)
    assert "cannot decode" in finding.message


def test_a_coding_cookie_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "latin.py"
    source = in_workflow("x = ('\xe9', time.time())", "# -*- coding: latin-1 -*-\nimport time")
    path.write_bytes(source.encode("latin-1"))
    [finding] = lint_file(path)
    assert finding.code == "SW001"
    assert finding.col == len("    x = ('\xe9', ") + 1


def test_columns_count_characters_not_bytes() -> None:
    [finding] = lint_source(in_workflow("x = ('ééé', time.time())", "import time"), "m.py")
    assert finding.col == len("    x = ('ééé', ") + 1


def test_finding_text_and_json_forms() -> None:
    finding = Finding("pkg/mod.py", 3, 5, "SW001", "time.time() reads the clock")
    assert finding.format() == "pkg/mod.py:3:5: SW001 time.time() reads the clock"
    assert finding.to_dict() == {
        "path": "pkg/mod.py",
        "line": 3,
        "col": 5,
        "code": "SW001",
        "message": "time.time() reads the clock",
    }
    with pytest.raises(AttributeError):
        finding.line = 4  # type: ignore[misc]


def test_findings_are_sorted_by_position() -> None:
    source = in_workflow("a = (uuid.uuid4(), time.time())\nb = time.time()", "import time, uuid")
    found = lint_source(source, "m.py")
    assert [(f.line, f.col) for f in found] == sorted((f.line, f.col) for f in found)
    assert [f.code for f in found] == ["SW003", "SW001", "SW001"]


# ----------------------------------------------------------------------------- paths
BAD = in_workflow("return time.time()", "import time")
GOOD = in_workflow("return ctx.now()")


def test_directories_are_searched_recursively(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "a.py").write_text(BAD)
    (tmp_path / "pkg" / "b.py").write_text(GOOD)
    (tmp_path / "pkg" / "sub" / "c.py").write_text(BAD)
    (tmp_path / "pkg" / "notes.txt").write_text(BAD)
    (tmp_path / ".hidden" / "d.py").write_text(BAD)
    (tmp_path / "__pycache__" / "e.py").write_text(BAD)

    files = python_files([tmp_path])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "a.py",
        "pkg/b.py",
        "pkg/sub/c.py",
    ]
    found = lint_paths([tmp_path])
    assert [Path(f.path).relative_to(tmp_path).as_posix() for f in found] == [
        "a.py",
        "pkg/sub/c.py",
    ]
    assert summary(found, len(files)) == "Found 2 problems in 2 files (3 files checked)."


def test_files_named_explicitly_are_checked_once(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text(BAD)
    (tmp_path / "a.py").write_text(BAD)
    files = python_files([script, tmp_path / "a.py", str(tmp_path)])
    assert files == [script, tmp_path / "a.py"]
    assert [f.path for f in lint_paths([script])] == [str(script)]


def test_a_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        lint_paths([tmp_path / "missing"])


def test_summary_lines() -> None:
    one = Finding("a.py", 1, 1, "SW001", "m")
    assert summary([], 1) == "No determinism problems found in 1 file."
    assert summary([], 4) == "No determinism problems found in 4 files."
    assert summary([one], 1) == "Found 1 problem in 1 file (1 file checked)."
