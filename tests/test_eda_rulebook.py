"""The Event-Driven Ansible source in the real ``ansible-rulebook`` (the ``eda`` extra; Java 17+), with real
``ansible-runner run`` processes publishing through a real broker process.

One rulebook process serves the scenario (ansible-rulebook starts in seconds): ruleset ``live`` takes the
source by its collection name (installed with ``zmq-emitter eda install``), ruleset ``replay`` by file
with ``-S``, asking the history for a run that began before the rulebook.  Each test checks one
behaviour on what the rules did.
"""
from __future__ import annotations

import itertools
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (BIN, BrokerProcess, RawPublisher, run_cli, runner_env, stop_process, wait_connected,
                      wait_until)

from zmq_emitter.consumers import eda
from zmq_emitter.demo import PROJECT

PROBLEM = eda.rulebook_problem(BIN / "ansible-rulebook")
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM))

BEFORE, FAILED, CLEAN = "eda-before", "eda-failed", "eda-clean"
PROBE = "eda-probe"

RULEBOOK = """
- name: live
  hosts: all
  sources:
    - zmq_emitter.eda.runner_events:
        endpoints: {backend}
  rules:
    - name: remediate the failed host
      condition: event.event == "runner_on_failed"
      action:
        run_playbook:
          name: {remediate}
    - name: final status
      condition: event.status in ["successful", "failed", "error", "canceled", "timeout"]
      action:
        debug:
          msg: "LIVE-FINAL {{{{ event.runner_ident }}}} {{{{ event.status }}}}"
    - name: unreachable
      condition: event.event == "runner_on_unreachable"
      action:
        debug:
          msg: "LIVE-UNREACHABLE {{{{ event.meta.ident }}}} {{{{ event.event_data.host }}}}"
    - name: probe
      condition: event.meta.ident == "{probe}"
      action:
        debug:
          msg: "LIVE-PROBE {{{{ event.probe }}}}"

- name: replay
  hosts: all
  sources:
    - runner_events:
        endpoints: {backend}
        history: {history}
        runs: {before}
        replay: true
  rules:
    - name: start
      condition: event.event == "playbook_on_start"
      action:
        debug:
          msg: "REPLAY-START {{{{ event.meta.ident }}}} replayed={{{{ event.meta.replayed }}}}"
    - name: final status
      condition: event.status == "successful"
      action:
        debug:
          msg: "REPLAY-FINAL {{{{ event.runner_ident }}}}"
"""

REMEDIATE = """
- name: remediate
  hosts: all
  gather_facts: false
  tasks:
    - name: Leave a mark per host
      ansible.builtin.copy:
        content: "{{{{ ansible_eda.event.event_data.task }}}}"
        dest: "{marks}/{{{{ inventory_hostname }}}}-{{{{ ansible_eda.event.meta.ident }}}}"
"""


class Rulebook:
    """``ansible-rulebook`` as a real process; ``output`` collects its stdout and stderr as they come."""

    def __init__(self, args: list[str], env: dict, cwd: Path):
        self.proc = subprocess.Popen([str(BIN / "ansible-rulebook"), *args], env=env, cwd=cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def count(self, text: str) -> int:
        return sum(1 for line in self.lines if line.strip() == text)

    def wait(self, *texts: str, timeout: float = 60.0) -> None:
        wait_until(lambda: all(self.count(text) for text in texts) or self.proc.poll() is not None, timeout, 0.1,
                   f"rulebook output {texts}")
        assert all(self.count(text) for text in texts), f"rulebook ended early:\n{self.output}"

    def stop(self) -> str:
        stop_process(self.proc, 15)
        self._reader.join(10)
        return self.output


def rulebook_env(tmp: Path) -> dict:
    """ansible-galaxy on PATH (collection look-up) and the collection installed offline where Ansible looks."""
    env = runner_env()
    collections = tmp / "collections"
    installed = subprocess.run([str(BIN / "zmq-emitter"), "eda", "install", "--path", str(collections)], env=env,
                               capture_output=True, text=True, timeout=120)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    env["ANSIBLE_COLLECTIONS_PATH"] = str(collections)
    return env


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """Run ``eda-before`` (the long playbook) begins; the rulebook starts; ``eda-failed`` (web2 fails, host
    ``gone`` is unreachable) and ``eda-clean`` run.  Yields the rulebook (stopped) and the remediation marks."""
    tmp = tmp_path_factory.mktemp("eda")
    project = tmp / "project"
    shutil.copytree(PROJECT, project)
    marks = tmp / "marks"
    marks.mkdir()
    playbooks = tmp / "playbooks"  # run_playbook copies the playbook's directory: nothing else in it
    playbooks.mkdir()
    (playbooks / "remediate.yml").write_text(REMEDIATE.format(marks=marks))
    (tmp / "unreachable.ini").write_text(
        "gone ansible_connection=ssh ansible_host=127.0.0.1 ansible_port=1 ansible_ssh_common_args='-o BatchMode=yes'\n")
    broker = BrokerProcess(f"ipc://{tmp}/frontend", f"ipc://{tmp}/backend", "--startup-grace", "0")
    env = runner_env(RUNNER_ZMQ_URL=broker.frontend)
    rulebook = None
    try:
        before = subprocess.Popen([str(BIN / "ansible-runner"), "run", str(project), "-p", "long.yml", "--ident",
                                   BEFORE, "--cmdline", "-e steps=120 -e pause=0.05"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (tmp / "rulebook.yml").write_text(RULEBOOK.format(backend=broker.backend, history=broker.history,
                                                          before=BEFORE, probe=PROBE, remediate=playbooks / "remediate.yml"))
        wait_until(lambda: (project / "artifacts" / BEFORE / "job_events").is_dir(), 60, 0.05, "run eda-before began")
        rulebook = Rulebook(["-r", str(tmp / "rulebook.yml"), "-i", str(project / "inventory" / "hosts"), "-S", str(eda.SOURCES)],
                            rulebook_env(tmp), tmp)
        wait_connected(broker.backend, 2, timeout=60)  # both sources' SUB sockets: their subscriptions are sent
        with RawPublisher(broker.frontend) as prober:  # ... and in place: a probe reaches the live ruleset
            wait_until(lambda: prober.send(PROBE, "probe", {"probe": "first"}) and rulebook.count("LIVE-PROBE first"),
                       60, 0.2, "a probe through the live ruleset")
            failed = run_cli(project, FAILED, env, fail_host="web2", cmdline=f"-i {tmp / 'unreachable.ini'}")
            clean = run_cli(project, CLEAN, env, fail_host="none")
            assert before.wait(120) == 0 and failed.returncode != 0 and clean.returncode == 0, failed.stdout
            rulebook.wait(f"LIVE-FINAL {FAILED} failed", f"LIVE-FINAL {CLEAN} successful", f"REPLAY-FINAL {BEFORE}")
            # Whatever the rules were given before it has been through them once the last probe has.
            wait_until(lambda: prober.send(PROBE, "probe", {"probe": "last"}) and rulebook.count("LIVE-PROBE last"),
                       60, 0.2, "the last probe through the live ruleset")
        wait_until(lambda: list(marks.iterdir()), 60, 0.1, "the remediation playbook's mark")
        yield rulebook, marks
    finally:
        if rulebook is not None:
            print(rulebook.stop())
        broker.stop()


def test_a_failed_task_runs_a_real_remediation_playbook_limited_to_that_host(scenario):
    rulebook, marks = scenario
    assert sorted(mark.name for mark in marks.iterdir()) == [f"web2-{FAILED}"]
    assert (marks / f"web2-{FAILED}").read_text() == "Fail on one host"


def test_a_rule_on_the_final_status_fires_once_per_run(scenario):
    rulebook, _ = scenario
    assert rulebook.count(f"LIVE-FINAL {FAILED} failed") == 1
    assert rulebook.count(f"LIVE-FINAL {CLEAN} successful") == 1
    assert len([line for line in rulebook.lines if line.startswith("LIVE-FINAL ")]) <= 3  # and eda-before's at most


def test_a_rule_on_an_unreachable_host_fires(scenario):
    rulebook, _ = scenario
    assert rulebook.count(f"LIVE-UNREACHABLE {FAILED} gone") == 1


def test_a_rulebook_started_after_a_run_began_replays_it_when_asked_by_the_source_given_with_s(scenario):
    rulebook, _ = scenario
    assert rulebook.count(f"REPLAY-START {BEFORE} replayed=True") == 1  # the run's start came from the history
    assert rulebook.count(f"REPLAY-FINAL {BEFORE}") == 1
    assert "LIVE-START" not in rulebook.output and f"REPLAY-FINAL {FAILED}" not in rulebook.output  # runs: one


def test_the_source_is_found_by_its_collection_name_once_installed_with_zmq_emitter_eda_install(scenario):
    rulebook, _ = scenario
    assert rulebook.count("LIVE-PROBE first") >= 1  # the ruleset "live" names it zmq_emitter.eda.runner_events


def test_a_mistake_in_the_sources_arguments_ends_the_rulebook_with_a_message_naming_it(tmp_path):
    (tmp_path / "rulebook.yml").write_text("""
- name: mistaken
  hosts: all
  sources:
    - runner_events:
        endpoint: tcp://127.0.0.1:1
  rules:
    - name: never
      condition: event.event == "runner_on_ok"
      action:
        debug:
""")
    (tmp_path / "hosts").write_text("localhost ansible_connection=local\n")
    done = subprocess.run([str(BIN / "ansible-rulebook"), "-r", "rulebook.yml", "-i", "hosts", "-S", str(eda.SOURCES)],
                          env=runner_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "unknown argument(s) 'endpoint'; accepted: endpoints" in done.stdout + done.stderr


ODD_RULEBOOK = """
- name: odd
  hosts: all
  sources:
    - runner_events:
        endpoints: {backend}
  rules:
    - name: each event
      condition: event.event == "runner_on_ok"
      action:
        debug:
          msg: "ODD {{{{ event.n }}}}"
"""


def test_payloads_that_would_stall_ansible_rulebook_reach_the_rules_and_the_rules_go_on(tmp_path, broker_process):
    """An empty key anywhere in a payload, or nesting 900 levels deep: ansible-rulebook takes such an event
    and then fires no rule ever again, with no error (seen with ansible-rulebook 1.3.2).  The source hands
    them on made safe (docs/eda.md, "What a rule sees"), and the events after them still fire rules."""
    (tmp_path / "rulebook.yml").write_text(ODD_RULEBOOK.format(backend=broker_process.backend))
    (tmp_path / "hosts").write_text("localhost ansible_connection=local\n")
    deep: object = "bottom"
    for _ in range(900):
        deep = {"d": deep}
    rulebook = Rulebook(["-r", "rulebook.yml", "-i", "hosts", "-S", str(eda.SOURCES)], runner_env(), tmp_path)
    try:
        with RawPublisher(broker_process.frontend) as publisher:
            probes = itertools.count(1)
            wait_until(lambda: publisher.send("odd", "runner_on_ok", {"event": "runner_on_ok", "n": "probe"},
                                              pub=publisher.probe_pub, seq=next(probes))
                       and rulebook.count("ODD probe"),
                       60, 0.2, "a probe through the rulebook")
            publisher.send("odd", "runner_on_ok", {"event": "runner_on_ok", "n": 1, "event_data": {"res": {"": 1}}})
            publisher.send("odd", "runner_on_ok", {"event": "runner_on_ok", "n": 2, "event_data": deep})
            publisher.send("odd", "runner_on_ok", {"event": "runner_on_ok", "n": 3})
            rulebook.wait("ODD 1", "ODD 2", "ODD 3", timeout=30)
    finally:
        rulebook.stop()
