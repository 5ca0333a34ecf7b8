"""The release: ``python -m build`` makes a wheel and an sdist that pass ``twine check``, and the wheel alone,
installed into a fresh virtual environment, runs a broker, a real ``ansible-runner run`` and ``tail``.

The build and the environment are made once for the module (about a minute: pip downloads through its
cache); tests marked ``release`` can be left out with ``-m "not release"``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from conftest import BIN, FINAL_STATUSES, BrokerProcess, job_events

import zmq_emitter

ROOT = Path(__file__).resolve().parent.parent
VERSION = zmq_emitter.__version__

pytestmark = pytest.mark.release


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The wheel and the sdist, as ``python -m build`` makes them (the wheel built from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def wheel_of(dist: Path) -> Path:
    return dist / f"ansible_runner_zmq-{VERSION}-py3-none-any.whl"


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> Path:
    """A fresh virtual environment holding the wheel and ansible-runner (with ansible-core), nothing else."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    done = subprocess.run([str(root / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                           str(wheel_of(dist)), "ansible-runner", "ansible-core"],
                          capture_output=True, text=True, timeout=600, cwd=root, env=fresh_env(root))
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def fresh_env(venv: Path) -> dict:
    """The environment of the fresh venv's processes: its bin first, nothing of this checkout's venv."""
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != BIN]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")
           and not k.startswith("RUNNER_ZMQ_")}
    env.update(PATH=os.pathsep.join([str(venv / "bin"), *path]), VIRTUAL_ENV=str(venv))
    return env


def in_venv(venv: Path, *argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], capture_output=True, text=True,
                          cwd=cwd, env=fresh_env(venv), timeout=timeout)


def test_the_wheel_and_the_sdist_pass_twine_check(dist):
    files = sorted(str(f) for f in dist.iterdir())
    assert [Path(f).name for f in files] == [f"ansible_runner_zmq-{VERSION}-py3-none-any.whl",
                                              f"ansible_runner_zmq-{VERSION}.tar.gz"]
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_wheel_holds_every_file_of_the_package(dist):
    package = ROOT / "zmq_emitter"
    expected = {str(f.relative_to(ROOT)) for f in package.rglob("*")
                if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"}
    with zipfile.ZipFile(wheel_of(dist)) as wheel:
        names = set(wheel.namelist())
        entry_points = wheel.read(f"ansible_runner_zmq-{VERSION}.dist-info/entry_points.txt").decode()
    assert expected - names == set()
    assert any(name.startswith("zmq_emitter/demo/project/project/") for name in names)
    assert "zmq_emitter/consumers/eda/collection/galaxy.yml" in names
    assert re.search(r"\[ansible_runner\.plugins\]\s+zmq = zmq_emitter", entry_points)
    assert re.search(r"\[console_scripts\]\s+zmq-emitter = zmq_emitter\.cli:main", entry_points)


def test_the_sdist_holds_the_docs_the_changelog_and_the_systemd_unit(dist):
    with tarfile.open(dist / f"ansible_runner_zmq-{VERSION}.tar.gz") as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"README.md", "CHANGELOG.md", "mkdocs.yml", "docs/protocol.md", "pyproject.toml",
            "contrib/zmq-emitter-broker.service", "zmq_emitter/demo/project/project/demo.yml"} <= names


def test_the_installed_wheel_prints_its_version(venv, tmp_path):
    done = in_venv(venv, "zmq-emitter", "--version", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"zmq-emitter {VERSION}\n"), done.stderr


def test_the_installed_wheel_points_ansible_rulebook_at_its_own_eda_source(venv, tmp_path):
    done = in_venv(venv, "zmq-emitter", "eda", "sources", cwd=tmp_path)
    sources = Path(done.stdout.strip())
    assert done.returncode == 0 and sources.is_relative_to(venv), done.stdout + done.stderr
    assert (sources / "runner_events.py").is_file()


def test_the_installed_wheel_carries_a_real_run_from_ansible_runner_to_tail(venv, tmp_path):
    """The plugin found by ansible-runner through the wheel's entry point, the broker and tail from the
    wheel, the demo project from its package data; nothing from this checkout."""
    where = in_venv(venv, "python", "-c", "import zmq_emitter.demo as d; print(d.__file__); print(d.PROJECT)",
                    cwd=tmp_path)
    module, project_data = where.stdout.split()
    assert module.startswith(str(venv)), module
    project = tmp_path / "project"
    shutil.copytree(project_data, project)

    broker = BrokerProcess(f"ipc://{tmp_path}/frontend", f"ipc://{tmp_path}/backend", "--startup-grace", "0",
                           history=f"ipc://{tmp_path}/history", program=venv / "bin" / "zmq-emitter")
    try:
        # --replay: the run's history first, then live, so that it does not matter when tail subscribes.
        tail = subprocess.Popen([str(venv / "bin" / "zmq-emitter"), "tail", "--connect", broker.backend,
                                 "--history", broker.history, "--replay", "--ident", "release",
                                 "--until-done", "--timeout", "120", "--format", "json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                env=fresh_env(venv))
        env = dict(fresh_env(venv), RUNNER_ZMQ_URL=broker.frontend, RUNNER_ZMQ_SPOOL="none")
        run = subprocess.run([str(venv / "bin" / "ansible-runner"), "run", str(project), "-p", "demo.yml",
                              "--ident", "release", "--cmdline", "-e fail_host=none"],
                             capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        out, err = tail.communicate(timeout=150)
    finally:
        broker.stop()
        if tail.poll() is None:
            tail.kill()
    assert tail.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    events = [line["event"] for line in lines if "event" in line]
    statuses = [line["status"] for line in lines if "status" in line and "event" not in line]
    # Output before the playbook starts comes as `verbose` events (cryptography 51 warns on import that DSA is
    # deprecated, in a fresh environment from PyPI): the playbook's own events start and end the run.
    played = [event for event in events if event != "verbose"]
    assert played[0] == "playbook_on_start" and played[-1] == "playbook_on_stats"
    assert "runner_on_ok" in events
    assert statuses[0] == "starting" and statuses[-1] == "successful" and FINAL_STATUSES & set(statuses)
    # The same events ansible-runner wrote to its artifacts, each once.
    assert events == [event["event"] for event in job_events(project, "release")]


def install_lines(markdown: Path) -> list[str]:
    """The ``pip install`` commands of a document's sh blocks, without their comments."""
    blocks = re.findall(r"^```sh\n(.*?)^```", markdown.read_text(), flags=re.MULTILINE | re.DOTALL)
    return [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()
            if line.startswith("pip install ")]


def test_the_readme_installs_the_package_as_docs_operations_does():
    readme, operations = install_lines(ROOT / "README.md"), install_lines(ROOT / "docs" / "operations.md")
    assert readme[:1] == operations[:1] == ["pip install ansible-runner-zmq"], (readme, operations)


def test_the_changelog_has_a_section_for_this_version():
    headings = re.findall(r"^## \[([^\]]+)\]", (ROOT / "CHANGELOG.md").read_text(), flags=re.MULTILINE)
    assert headings[:2] == ["Unreleased", VERSION]
