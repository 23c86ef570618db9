"""Testing helpers for Stalwart users and store adapter authors.

:class:`StoreContract` is the store conformance suite: subclass it in a pytest module,
provide a ``store`` fixture (and optionally ``open_peer``), and every rule of the storage
port in :mod:`stalwart.store.base` is checked against your adapter.
"""

from __future__ import annotations

import pytest

# Let pytest rewrite the suite's asserts (readable failures) when it imports it.
pytest.register_assert_rewrite("stalwart.testing.contract")

from stalwart.testing.contract import FakeClock, PeerOpener, StoreContract  # noqa: E402
from stalwart.testing.environment import TestEngine, VirtualClock  # noqa: E402
from stalwart.testing.replayer import Replayer, ReplayResult  # noqa: E402

__all__ = [
    "FakeClock",
    "PeerOpener",
    "ReplayResult",
    "Replayer",
    "StoreContract",
    "TestEngine",
    "VirtualClock",
]
