"""The broker side: what runs on a broker host.

- ``broker``   the XSUB/XPUB proxy, acknowledgements, start-up grace
- ``history``  the bounded history of recent runs and its journal on disk
- ``metrics``  ``--metrics``: the Prometheus collector over ``Broker.stats()`` and its HTTP server
"""
from .broker import Broker, BrokerError

__all__ = ["Broker", "BrokerError"]
