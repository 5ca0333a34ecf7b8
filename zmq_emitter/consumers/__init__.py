"""The consumers: what reads the bus.

- ``core``        the sans-I/O core: ``Tracker`` (messages, gaps, history dialogues), ``Dialogue``
- ``subscriber``  the library: ``Subscriber`` / ``AsyncSubscriber``, thin shells around the core
- ``tail``        the terminal view (``zmq-emitter tail``)
- ``eda``         the Event-Driven Ansible source (``ansible-rulebook``; docs/eda.md)

    >>> from zmq_emitter.consumers import Subscriber
"""
from .core import Gap, Tracker
from .subscriber import AsyncSubscriber, Subscriber, subscriptions

__all__ = ["AsyncSubscriber", "Gap", "Subscriber", "Tracker", "subscriptions"]
