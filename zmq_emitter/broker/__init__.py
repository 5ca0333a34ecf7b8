"""The broker side: what runs on a broker host.

- ``broker``   the XSUB/XPUB proxy, acknowledgements, start-up grace
- ``history``  the bounded history of recent runs and its journal on disk
"""
from .broker import Broker, BrokerError

__all__ = ["Broker", "BrokerError"]
