"""Event-Driven Ansible: the bus as an ``ansible-rulebook`` event source (docs/eda.md).

- ``source``      the source's logic: ``main(queue, args)``, its ``Options``, the events' shape
- ``collection/`` the Ansible collection ``zmq_emitter.eda`` shipped in the package; its source file
                  only re-exports ``source.main``

    zmq-emitter eda install                  # the collection, offline, into Ansible's collections path
    ansible-rulebook -r rulebook.yml -i inventory          # sources: - zmq_emitter.eda.runner_events: ...
    ansible-rulebook -r rulebook.yml -i inventory -S "$(zmq-emitter eda sources)"   # or by file: - runner_events:
"""
from __future__ import annotations

from pathlib import Path

COLLECTION = Path(__file__).resolve().parent / "collection"
SOURCES = COLLECTION / "extensions" / "eda" / "plugins" / "event_source"  # for ansible-rulebook -S


def install_command(galaxy: str, path: str | None = None) -> list[str]:
    """The ``ansible-galaxy`` command that installs the shipped collection (offline: it is a local directory).

    >>> install_command("ansible-galaxy", "/tmp/c")[-3:]
    ['--force', '-p', '/tmp/c']
    """
    return [galaxy, "collection", "install", str(COLLECTION), "--force"] + (["-p", path] if path else [])
