"""The store conformance suite: one set of tests that every store adapter must pass.

Adapter authors subclass :class:`StoreContract` in a pytest module and provide a
``store`` fixture that yields an *opened* store built with the suite's ``clock`` fixture::

    import pytest_asyncio
    from stalwart.testing import StoreContract


    class TestMyStore(StoreContract):
        @pytest_asyncio.fixture
        async def store(self, clock):
            store = MyStore(dsn, clock=clock)  # a fresh, empty database
            await store.open()
            yield store
            await store.close()

The tests never sleep: time is a :class:`FakeClock` the tests advance by hand, so the
store must read the time only through the ``clock`` it was given.

Backend differences are declared as data in ``store.capabilities``; tests that need a
capability skip themselves when the adapter does not declare it. Stores that declare
``durable`` or ``multi_process`` must also override the ``open_peer`` fixture: a callable
that opens another store on the *same* database (same clock), standing in for another
process. The fixture is responsible for closing the stores it opened.

Every test is a coroutine and the class carries the ``asyncio`` mark, so the suite runs
with pytest-asyncio in either ``strict`` or ``auto`` mode.
"""

from __future__ import annotations

import pytest

from stalwart.testing.contract._support import FakeClock, PeerOpener
from stalwart.testing.contract.distribution import DistributionContract
from stalwart.testing.contract.messages import MessagesContract
from stalwart.testing.contract.queues import QueuesContract
from stalwart.testing.contract.reads import ReadsContract
from stalwart.testing.contract.writes import WritesContract

__all__ = ["FakeClock", "PeerOpener", "StoreContract"]


@pytest.mark.asyncio
class StoreContract(
    WritesContract, MessagesContract, DistributionContract, ReadsContract, QueuesContract
):
    """The conformance suite for :class:`stalwart.store.base.Store` adapters.

    Subclass it (with a name pytest collects, such as ``TestMyStore``) and provide:

    * ``store`` -- an opened store on a fresh, empty database, built with the ``clock``
      fixture as its clock, and closed after the test;
    * ``open_peer`` (only for stores declaring ``durable`` or ``multi_process``) -- a
      :data:`PeerOpener` for the same database, or ``None``.
    """

    @pytest.fixture
    def clock(self) -> FakeClock:
        """The fake clock the ``store`` fixture must give its store."""
        return FakeClock()

    @pytest.fixture
    def open_peer(self) -> PeerOpener | None:
        """Override to open more stores on the same database (default: unsupported)."""
        return None
