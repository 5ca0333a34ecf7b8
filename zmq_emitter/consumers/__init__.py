"""The consumers: what reads the bus.

- ``subscriber``  the library: ``Tracker`` (sans-I/O) with ``Subscriber`` / ``AsyncSubscriber`` around it
- ``tail``        the terminal view (``zmq-emitter tail``)

    >>> from zmq_emitter.consumers import Subscriber
"""
from .subscriber import AsyncSubscriber, Gap, Subscriber, Tracker, subscriptions

__all__ = ["AsyncSubscriber", "Gap", "Subscriber", "Tracker", "subscriptions"]
