"""WorkerOptions validation at the boundary."""

from __future__ import annotations

import pytest

from stalwart import WorkerOptions
from stalwart.errors import ConfigurationError


@pytest.mark.parametrize("value", [0, -1, 1.5, "512"])
def test_commit_batch_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(ConfigurationError, match="commit_batch must be a positive integer"):
        WorkerOptions(commit_batch=value)  # type: ignore[arg-type]


async def test_commit_batch_bounds_the_group_committer() -> None:
    from stalwart import Engine

    async with Engine("memory://", workflows=[], options=WorkerOptions(commit_batch=3)) as engine:
        assert engine.committer._max_batch == 3
