"""Lease renewal on a dedicated thread, so a blocked event loop cannot lose the lease."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from stalwart.store.base import HeartbeatSession

logger = logging.getLogger("stalwart.runtime")


class HeartbeatThread:
    """Renews one worker's lease every ``interval`` seconds until stopped."""

    def __init__(
        self,
        session: HeartbeatSession,
        worker_id: str,
        *,
        ttl: float,
        interval: float,
        on_lost: Callable[[], None],
    ) -> None:
        self._session = session
        self._worker_id = worker_id
        self._ttl = ttl
        self._interval = interval
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"stalwart-heartbeat-{worker_id}", daemon=True
        )
        self._failing = False

    def start(self) -> None:
        """Start renewing."""
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and close the session."""
        self._stop.set()
        self._thread.join(timeout=self._interval + 5)
        self._session.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                alive = self._session.renew(self._worker_id, self._ttl)
            except Exception as exc:  # noqa: BLE001 - logged once per outage, retried
                if not self._failing:
                    logger.warning("lease renewal failing (will keep trying): %s", exc)
                    self._failing = True
                continue
            if self._failing:
                logger.info("lease renewal recovered")
                self._failing = False
            if not alive:
                logger.warning("worker %s lost its lease; re-registering", self._worker_id)
                self._on_lost()
