"""Small text helpers shared by the runner's settings (runner/config.py), the command line (cli.py) and
the EDA source's arguments (consumers/eda/source.py).

    >>> split_commas("tcp://a:1, ipc:///tmp/b")
    ('tcp://a:1', 'ipc:///tmp/b')
    >>> split_commas(["status", "event,publisher"])  # repeated options and YAML lists alike
    ('status', 'event', 'publisher')
    >>> check_endpoint("tcp://broker:99999", bind=False)
    'the port must be between 1 and 65535'
"""
from __future__ import annotations

import re
from typing import Any


def split_commas(values: Any) -> tuple[str, ...]:
    """The non-empty, stripped items of a comma-separated string, or of each string in a list or tuple."""
    items = values if isinstance(values, (list, tuple)) else [values]
    return tuple(part.strip() for item in items for part in str(item).split(",") if part.strip())


_TCP = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):([0-9]{1,5})$")
_TCP_BIND = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|\*|[^\s:/\[\]]+):([0-9]{1,5}|\*)$")


def check_endpoint(endpoint: str, *, bind: bool) -> str | None:
    """None if ``endpoint`` is a usable tcp:// or ipc:// endpoint, else why it is not."""
    if any(ord(char) < 32 for char in endpoint):  # libzmq would cut the endpoint at a NUL
        return "the endpoint holds a control character"
    if endpoint.startswith("ipc://"):
        return None if len(endpoint) > len("ipc://") else "an ipc:// endpoint needs a path"
    if endpoint.startswith("tcp://"):
        match = (_TCP_BIND if bind else _TCP).match(endpoint)
        if not match:
            return "a tcp:// endpoint is tcp://HOST:PORT" + (" (HOST and PORT may be *)" if bind else "")
        port = match.group(2)
        if port != "*" and not 0 < int(port) < 65536:
            return "the port must be between 1 and 65535"
        return None
    return "the endpoint must start with tcp:// or ipc://"
