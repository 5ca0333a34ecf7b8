"""The plugin under real ansible-runner runs: every event and status arrives, in order, equal to the artifacts."""
from conftest import collect_run, job_events, run_cli, runner_env, wait_subscribed

from zmq_emitter.consumers.subscriber import Subscriber


def test_ansible_runner_run_command_delivers_every_event_and_status_in_order(project, broker):
    with Subscriber(broker.backend_endpoints) as sub:
        wait_subscribed(broker.frontend_endpoints[0], sub)
        result = run_cli(project, "cli-run", runner_env(RUNNER_ZMQ_URL=broker.frontend_endpoints[0]))
        assert result.returncode == 2, result.stderr  # the demo playbook fails on web2
        messages = collect_run(sub, "cli-run")
    statuses = [m.name for m in messages if m.kind == "status"]
    events = [m.payload for m in messages if m.kind == "event"]
    assert statuses == ["starting", "running", "failed"]
    assert events == job_events(project, "cli-run")
    assert len(events) > 30
    assert sub.gaps == [] and sub.counts.invalid == 0
