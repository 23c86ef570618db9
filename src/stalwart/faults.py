"""Fault-injection points for exact crash tests (free when unused).

The runtime calls :func:`point` at its commit points. Nothing happens unless a plan is
installed, either in code (:func:`install`) or, for worker subprocesses, through the
``STALWART_FAULTS`` environment variable read at import::

    STALWART_FAULTS="activity.after_result:exit:3"   # die at the 3rd time the point is hit

A plan entry is ``point:action[:nth]``; entries are separated by commas. Actions:
``exit`` (``os._exit(137)``, like SIGKILL: no cleanup, no flush) and ``raise`` (raise
:class:`InjectedFault`). Points:

* ``activity.after_result`` — an activity returned; its result is not committed yet;
* ``commit.before`` — a write batch is about to be committed;
* ``commit.after`` — a write batch committed; no waiter has been told yet (lost ack).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

POINTS = ("activity.after_result", "commit.before", "commit.after")
"""Every injection point the runtime has."""


class InjectedFault(Exception):
    """Raised by a ``raise`` action."""


@dataclass(slots=True)
class _Rule:
    action: str
    nth: int
    hits: int = 0


@dataclass(slots=True)
class FaultPlan:
    """Which points fail, how, and at which hit."""

    rules: dict[str, _Rule] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        """Parse ``point:action[:nth],...`` (see the module docstring)."""
        plan = cls()
        for entry in filter(None, (part.strip() for part in text.split(","))):
            name, _, rest = entry.partition(":")
            action, _, nth = rest.partition(":")
            if name not in POINTS or action not in ("exit", "raise"):
                raise ValueError(f"bad fault entry {entry!r}: points {POINTS}, actions exit/raise")
            plan.rules[name] = _Rule(action, int(nth or "1"))
        return plan

    def hit(self, name: str) -> None:
        """Count a hit of ``name`` and fail if this is the planned one."""
        rule = self.rules.get(name)
        if rule is None:
            return
        with self.lock:
            rule.hits += 1
            fire = rule.hits == rule.nth
        if not fire:
            return
        if rule.action == "exit":
            os._exit(137)
        raise InjectedFault(f"injected fault at {name} (hit {rule.nth})")


ACTIVE: FaultPlan | None = (
    FaultPlan.parse(os.environ["STALWART_FAULTS"]) if os.environ.get("STALWART_FAULTS") else None
)
"""The installed plan (``None``: every point is a no-op)."""


def point(name: str) -> None:
    """A fault-injection point; costs one global lookup when no plan is installed."""
    if ACTIVE is not None:
        ACTIVE.hit(name)


def install(plan: FaultPlan | None) -> None:
    """Install (or, with ``None``, remove) a plan in this process."""
    global ACTIVE
    ACTIVE = plan
