"""The runner side: what runs inside ansible-runner.

- ``plugin``  the handlers ansible-runner calls and their publisher (the hot path)
- ``outbox``  what is kept, sent again, released or lost (sans-I/O)
- ``oversize`` events larger than a broker accepts, cut
- ``spool``   what a process could not deliver by exit, kept on disk for the next one
- ``config``  the ``runner_zmq_*`` settings
- ``redact``  what is removed from event content before it is published
"""
