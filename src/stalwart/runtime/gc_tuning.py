"""Raise the garbage collector's first threshold while workers run in this process.

A worker keeps thousands of live, GC-tracked objects (workflow coroutines, their tasks
and futures, histories). With CPython's default first threshold of 700 allocations, the
young collections run hundreds of times a second and each cascade into the older
generations walks that whole live set: profiling the fan-out benchmark (1,000 concurrent
workflows) found about a third of the CPU in collections. Collecting the youngest
generation every 50,000 net allocations instead keeps what a collection can find the
same (cycles are still collected) for a few megabytes of garbage held a little longer.

The threshold is process-wide, so this module counts the workers that asked for it and
puts the previous value back when the last one stops, unless someone else changed it
meanwhile (then theirs stays).
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_holders = 0
_saved: tuple[int, int, int] | None = None
_installed: tuple[int, int, int] | None = None


def hold(first_threshold: int) -> None:
    """A worker starts: make the first threshold at least ``first_threshold``."""
    global _holders, _saved, _installed
    with _lock:
        _holders += 1
        if _holders > 1:
            return
        current = gc.get_threshold()
        if current[0] == 0 or current[0] >= first_threshold:
            # Automatic collection is off, or someone already chose a higher value.
            _saved = _installed = None
            return
        _saved = (current[0], current[1], current[2])
        _installed = (first_threshold, current[1], current[2])
        gc.set_threshold(*_installed)


def release() -> None:
    """A worker stopped: the last one restores the threshold it found."""
    global _holders, _saved, _installed
    with _lock:
        if _holders == 0:
            raise RuntimeError("gc_tuning.release() without a matching hold()")
        _holders -= 1
        if _holders > 0 or _saved is None:
            return
        if gc.get_threshold() == _installed:
            gc.set_threshold(*_saved)
        _saved = _installed = None
