"""The tuning knobs of a worker, validated when built (docs/performance.md has the trade-offs)."""

from __future__ import annotations

from dataclasses import dataclass

from stalwart.errors import ConfigurationError
from stalwart.queues import Queue


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """Tuning knobs of a worker (see docs/architecture.md for the trade-offs)."""

    name: str | None = None
    """A readable name for this worker (default ``host:pid``)."""
    lease_seconds: float = 15.0
    """How long a dead worker's instances stay untouched before others take over."""
    poll_interval: float = 0.5
    """Fallback poll for work made by other processes (in-process work wakes at once)."""
    max_cached: int = 10_000
    """Blocked instances kept in memory; beyond this they are released to the store."""
    sticky_seconds: float = 30.0
    """Instances blocked on a timer further away than this are released to the store."""
    claim_batch: int = 100
    """Instances claimed per store round trip."""
    activity_threads: int = 32
    """Threads for synchronous activities."""
    max_concurrent_activities: int = 1_000
    """Activity attempts running at once in this worker."""
    max_concurrent_loads: int = 32
    """Instances being loaded (history read and replayed) at once."""
    shutdown_grace: float = 10.0
    """Seconds a graceful stop waits for running activities before handing them back."""
    queues: tuple[Queue, ...] = ()
    """Task queues this worker serves (remote activities, queued workflows), with limits."""
    history_warning: int = 10_000
    """Warn (once per run) when a run's history reaches this many events."""
    max_recoveries: int = 5
    """An instance taken over from dead workers more often than this is suspended (with
    error ``PoisonWorkflow``) instead of being run again: it may be what kills them."""
    history_limit: int = 200_000
    """End a run (``terminated``, with the reason) whose history would pass this many
    events: a runaway loop must not grow a history without bound."""
    max_payload_bytes: int = 2 * 1024 * 1024
    """Refuse encoded arguments, results and signal payloads larger than this."""
    warn_payload_bytes: int = 256 * 1024
    """Log a warning for encoded values larger than this."""
    liveness_interval: float = 0.25
    """How often to look for dead workers on this host (their work is taken over at once)."""
    host_id: str | None = None
    """Identifies this host for same-host liveness checks (default: hostname + pid
    namespace). Workers with different host ids only detect each other's death by lease."""
    commit_batch: int = 512
    """Most operations the group committer puts in one transaction. Larger batches amortise
    a commit (an fsync) over more steps under load but make each waiter of a batch wait
    for all of it; there is no timed window either way (a lone write commits at once)."""
    gc_threshold: int | None = 50_000
    """While the worker runs, collect the garbage collector's youngest generation only every
    this many net allocations (CPython's default is 700, which under load spends about a
    third of the CPU walking live workflow state). ``None`` leaves the collector alone."""

    def __post_init__(self) -> None:
        if self.gc_threshold is not None and (
            not isinstance(self.gc_threshold, int) or self.gc_threshold < 1
        ):
            raise ConfigurationError(
                f"gc_threshold must be a positive integer or None, got {self.gc_threshold!r}"
            )
        if not isinstance(self.commit_batch, int) or self.commit_batch < 1:
            raise ConfigurationError(
                f"commit_batch must be a positive integer, got {self.commit_batch!r}"
            )
