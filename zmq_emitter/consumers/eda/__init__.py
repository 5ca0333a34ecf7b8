"""Event-Driven Ansible: the bus as an ``ansible-rulebook`` event source (docs/eda.md).

- ``source``      the source's logic: ``main(queue, args)``, its ``Options``, the events' shape
- ``collection/`` the Ansible collection ``zmq_emitter.eda`` shipped in the package; its source file
                  only re-exports ``source.main``

    zmq-emitter eda install                  # the collection, offline, into Ansible's collections path
    ansible-rulebook -r rulebook.yml -i inventory          # sources: - zmq_emitter.eda.runner_events: ...
    ansible-rulebook -r rulebook.yml -i inventory -S "$(zmq-emitter eda sources)"   # or by file: - runner_events:
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

COLLECTION = Path(__file__).resolve().parent / "collection"
SOURCES = COLLECTION / "extensions" / "eda" / "plugins" / "event_source"  # for ansible-rulebook -S


def install_command(galaxy: str, path: str | None = None) -> list[str]:
    """The ``ansible-galaxy`` command that installs the shipped collection (offline: it is a local directory).

    >>> install_command("ansible-galaxy", "/tmp/c")[-3:]
    ['--force', '-p', '/tmp/c']
    """
    return [galaxy, "collection", "install", str(COLLECTION), "--force"] + (["-p", path] if path else [])


def rulebook_problem(rulebook: Path) -> str | None:
    """Why the ``ansible-rulebook`` at ``rulebook`` cannot run here (not installed, no Java 17+), or None.

    The tests and the benchmark that start the real ansible-rulebook skip with this reason.

    >>> rulebook_problem(Path("/nonexistent/ansible-rulebook")).startswith("ansible-rulebook is not installed")
    True
    """
    if not rulebook.exists():
        return "ansible-rulebook is not installed (the eda extra: pip install -e '.[test,eda]', or python3 dev.py test)"
    java = Path(os.environ["JAVA_HOME"]) / "bin" / "java" if os.environ.get("JAVA_HOME") else shutil.which("java")
    if java is None or not Path(java).exists():
        return "Java 17 or newer is needed by ansible-rulebook; no java found (JAVA_HOME or PATH)"
    version = subprocess.run([str(java), "-version"], capture_output=True, text=True).stderr
    major = re.search(r'version "(\d+)', version)
    if major is None or int(major[1]) < 17:
        return f"Java 17 or newer is needed by ansible-rulebook; found {version.splitlines()[:1]}"
    return None
