"""LISTEN on a store's wake channel over a dedicated connection that reconnects itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

import psycopg
from psycopg import sql

logger = logging.getLogger("stalwart.store")

INITIAL_BACKOFF = 0.05
"""Seconds before the first reconnection attempt; doubled after each failure."""
MAX_BACKOFF = 5.0
"""The longest wait between reconnection attempts."""
KEEPALIVE = 15.0
"""Seconds between liveness checks of an idle listening connection."""


class WakeListener:
    """Receives the notifications of a store's channels; :meth:`wait` reports them.

    The connection is opened by a background task on the first :meth:`start` (or
    :meth:`wait`). When it breaks (``pg_terminate_backend``, a server restart, a network
    failure found by the periodic liveness check) the task reconnects with exponential
    backoff; after a reconnection it reports a wake-up, since notifications sent while it
    was away are lost and the caller should look for due work.
    """

    def __init__(self, conninfo: str, channels: list[str]) -> None:
        self._conninfo = conninfo
        self._channels = list(channels)
        self._woken = asyncio.Event()
        self._listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.connections = 0
        """How many times the listening connection was (re)established."""
        self.payloads: deque[tuple[str, str]] = deque(maxlen=1000)
        """The latest ``(channel, payload)`` pairs received, oldest first."""

    def start(self) -> None:
        """Start listening in the background (idempotent)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"stalwart-listen-{self._channels[0]}"
            )

    async def wait_listening(self, timeout: float) -> bool:
        """Start listening and wait until LISTEN is in effect; False on timeout."""
        self.start()
        try:
            await asyncio.wait_for(self._listening.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def wait(self, timeout: float) -> bool:
        """True as soon as a notification arrived since the previous call, else False.

        Returns at once when one is pending; otherwise waits up to ``timeout`` seconds.
        """
        self.start()
        if not self._woken.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), max(0.0, timeout))
        woken = self._woken.is_set()
        self._woken.clear()
        return woken

    async def close(self) -> None:
        """Stop listening and close the connection."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        backoff = INITIAL_BACKOFF
        while True:
            conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                for channel in self._channels:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                if self.connections:
                    self._woken.set()  # we may have missed notifications while away
                self.connections += 1
                backoff = INITIAL_BACKOFF
                self._listening.set()
                while True:
                    async for note in conn.notifies(timeout=KEEPALIVE):
                        self.payloads.append((note.channel, note.payload))
                        self._woken.set()
                    await conn.execute("SELECT 1")  # a dead peer shows up here
            except psycopg.Error as exc:
                logger.warning(
                    "listener on %s lost its connection (retrying in %.2f s): %s",
                    ", ".join(self._channels),
                    backoff,
                    exc,
                )
            finally:
                self._listening.clear()
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        await conn.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
