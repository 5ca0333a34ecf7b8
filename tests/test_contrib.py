"""The systemd unit in contrib/ (docs/operations.md, "Running under systemd"): valid for systemd, and consistent
with the broker's options (the history directory in the unit's StateDirectory, the options from its
EnvironmentFile, restarted on failure)."""
from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from conftest import BIN

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
UNIT = CONTRIB / "zmq-emitter-broker.service"
INSTALLED = "/opt/zmq-emitter/venv/bin/zmq-emitter"  # where the unit expects the venv (its install comment)


def unit_settings(text: str) -> dict[tuple[str, str], str]:
    """(section, key) -> value of a unit file (comments, blank lines and continuations as systemd reads them)."""
    settings, section, pending = {}, None, ""
    for line in text.splitlines():
        line = pending + line.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings[(section, key.strip())] = value.strip()
    return settings


def test_the_broker_unit_runs_as_its_own_user_restarts_on_failure_and_keeps_its_history_in_its_state_directory():
    settings = unit_settings(UNIT.read_text())
    assert settings[("Service", "Restart")] == "on-failure"
    assert settings[("Service", "User")] == "zmq-emitter" != "root"
    assert settings[("Service", "NoNewPrivileges")] == "yes"
    assert settings[("Service", "ProtectSystem")] == "strict"  # only the state and runtime directories writable
    argv = shlex.split(settings[("Service", "ExecStart")])
    assert argv[:2] == [INSTALLED, "broker"]
    history_dir = argv[argv.index("--history-dir") + 1]
    assert history_dir.startswith(f"/var/lib/{settings[('Service', 'StateDirectory')]}/")
    assert settings[("Service", "EnvironmentFile")] == "/etc/zmq-emitter/broker.env"
    env = unit_settings((CONTRIB / "zmq-emitter-broker.env").read_text())
    options = shlex.split(env[(None, "ZMQ_EMITTER_BROKER_OPTIONS")])
    assert "$ZMQ_EMITTER_BROKER_OPTIONS" in argv  # unbraced: systemd splits the value into words
    assert "--history-dir" not in options  # the unit's, in its StateDirectory


def test_the_broker_unit_passes_systemd_analyze_verify(tmp_path):
    verify = shutil.which("systemd-analyze")
    if verify is None:  # the parse above is then the check
        import pytest
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # verify checks that ExecStart's program exists: this venv's instead of the installed one's.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(BIN / "zmq-emitter")))
    result = subprocess.run([verify, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr  # a warning is a finding too
