"""ZeroMQ status/event emitter for ansible-runner, and the bus around it.

ansible-runner loads this package as the plugin ``zmq`` (entry point group
``ansible_runner.plugins``) and calls the two handlers below for every status change
and every Ansible event.  The rest of the package is the other end of the wire:

- ``zmq_emitter.protocol``    the wire protocol (both sides import it)
- ``zmq_emitter.plugin``      the handlers and their publisher
- ``zmq_emitter.broker``      XSUB/XPUB broker fanning messages out to many subscribers
- ``zmq_emitter.subscriber``  subscriber library (blocking and asyncio)
- ``zmq_emitter.cli``         the ``zmq-emitter`` command: broker, tail, demo
"""
from .config import ConfigError
from .plugin import event_handler, status_handler

__version__ = "0.1.0"
__all__ = ["event_handler", "status_handler", "ConfigError", "__version__"]
