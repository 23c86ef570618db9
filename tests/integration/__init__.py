"""Integration tests: real worker processes, real SQLite files, real SIGKILLs."""
