"""Small text helpers shared by the runner's settings (runner/config.py) and the command line (cli.py).

    >>> split_commas("tcp://a:1, ipc:///tmp/b")
    ('tcp://a:1', 'ipc:///tmp/b')
    >>> split_commas(["status", "event,publisher"])  # repeated options and YAML lists alike
    ('status', 'event', 'publisher')
"""
from __future__ import annotations

from typing import Any


def split_commas(values: Any) -> tuple[str, ...]:
    """The non-empty, stripped items of a comma-separated string, or of each string in a list or tuple."""
    items = values if isinstance(values, (list, tuple)) else [values]
    return tuple(part.strip() for item in items for part in str(item).split(",") if part.strip())
