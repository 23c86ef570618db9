"""Property tests: randomly generated workflow programs against a reference interpreter.

* ``program.py`` — the program language (activities with retries and failures, timers,
  signals, child workflows, sagas, gathers, continue-as-new) and its JSON form;
* ``interpreter.py`` — the one Stalwart workflow that runs any program;
* ``reference.py`` — an independent plain-Python interpreter: expected result and
  commands of every run of every instance;
* ``strategies.py`` — Hypothesis strategies for programs;
* ``harness.py`` — running programs (memory store with the virtual clock and injected
  store outages, SQLite with restarts and takeovers, worker processes killed at commit
  points);
* ``checks.py`` — comparing what was recorded with the reference, exactly-once
  recording, replay of every recorded run;
* ``fixtures/`` — programs kept as regression tests (see its README).

By default the suite runs about 100 generated examples, the same ones on every run
(derandomized, for CI). A long run draws new ones each time, N examples in all::

    STALWART_PROPERTY_EXAMPLES=5000 .venv/bin/python -m pytest tests/property \
        --hypothesis-show-statistics

A failing example prints its program as JSON: keep it under ``fixtures/``.
"""
