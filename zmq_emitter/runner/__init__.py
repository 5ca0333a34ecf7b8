"""The runner side: what runs inside ansible-runner.

- ``plugin``  the handlers ansible-runner calls and their publisher (the hot path)
- ``config``  the ``runner_zmq_*`` settings
- ``redact``  what is removed from event content before it is published
"""
