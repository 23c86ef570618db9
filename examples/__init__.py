"""Runnable examples of Stalwart (``python -m examples.order_demo``)."""
