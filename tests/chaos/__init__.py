"""Process-kill acceptance tests of sagas."""
