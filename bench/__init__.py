"""Benchmarks: Stalwart against DBOS Transact, run with ``python -m bench``.

Modules: ``__main__`` (options, runs every measurement in a fresh child process),
``child`` (one measurement), ``stalwart_side`` / ``dbos_side`` (the same workflows on
each engine), ``raw`` (SQLite's raw commit rate), ``report`` (the tables) and
``common`` (shared helpers). See bench/README.md.
"""
