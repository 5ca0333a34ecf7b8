"""ZeroMQ status/event emitter for ansible-runner, and the bus around it.

ansible-runner loads this package as the plugin ``zmq`` (entry point group
``ansible_runner.plugins``) and calls the two handlers below for every status change
and every Ansible event.  The rest of the package is the other end of the wire:

- ``zmq_emitter.protocol``    the wire protocol, version 1 (every side imports it)
- ``zmq_emitter.security``    transport security: CURVE keys, ZAP, ipc permissions
- ``zmq_emitter.runner``      the runner side: plugin (the hot path), settings, redaction
- ``zmq_emitter.broker``      the broker side: XSUB/XPUB proxy, history
- ``zmq_emitter.consumers``   the consumers: subscriber library (blocking and asyncio), tail
- ``zmq_emitter.cli``         the ``zmq-emitter`` command, thin over all of the above

Imports point down: ``cli`` -> ``runner``, ``broker``, ``consumers`` -> ``protocol``, ``security``;
the three sides never import each other (they meet only in the wire protocol).
"""
from .runner.config import ConfigError
from .runner.plugin import event_handler, status_handler

__version__ = "0.1.0"
__all__ = ["event_handler", "status_handler", "ConfigError", "__version__"]
