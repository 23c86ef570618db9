"""Programs kept as fixtures (``fixtures/*.json``): seeds that once failed and hand-picked
tricky ones, run on every build on the in-memory store and on SQLite.

To keep a program: a failing property test prints ``program JSON: [...]``; save it as
``fixtures/<what_it_shows>.json`` (see ``fixtures/README.md``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from stalwart.testing import TestEngine

from .checks import check_against_reference
from .harness import (
    FIXTURES,
    VIRTUAL_TIMEOUT,
    run_on_sqlite,
    run_program,
)
from .interpreter import ACTIVITIES, prop_interp
from .program import Program, from_json, validate


@dataclass(frozen=True)
class Fixture:
    """A program file: what it shows, where it came from, the program."""

    name: str
    description: str
    origin: str
    program: Program


def load_fixture(name: str) -> Fixture:
    """Read and validate ``fixtures/<name>.json``."""
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    program = from_json(data["program"])
    validate(program)
    return Fixture(name, data["description"], data.get("origin", ""), program)


NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def test_there_are_fixtures() -> None:
    assert len(NAMES) >= 5


@pytest.mark.parametrize("name", NAMES)
def test_fixture_on_the_memory_store(name: str) -> None:
    program = load_fixture(name).program

    async def run() -> None:
        async with TestEngine(workflows=[prop_interp], activities=ACTIVITIES) as env:
            observed = await run_program(env, program, timeout=VIRTUAL_TIMEOUT)
        check_against_reference(program, observed)

    asyncio.run(run())


@pytest.mark.parametrize("name", NAMES)
def test_fixture_on_sqlite(name: str, tmp_path: Path) -> None:
    program = load_fixture(name).program
    observed = asyncio.run(run_on_sqlite(program, tmp_path / "store.db", scale=0.0005))
    check_against_reference(program, observed, scale=0.0005)
