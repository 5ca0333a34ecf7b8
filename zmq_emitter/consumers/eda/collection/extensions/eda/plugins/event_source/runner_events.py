"""ansible-rulebook event source: the runs on the ansible-runner ZeroMQ bus (zmq-emitter).

ansible-rulebook loads this file with ``runpy.run_path``: the logic is in the installed package,
``zmq_emitter.consumers.eda.source`` (imported absolutely; install ``ansible-runner-zmq`` in the
same environment as ansible-rulebook).  Run on its own, it prints the events it would queue:

    python runner_events.py tcp://127.0.0.1:5558
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any

from zmq_emitter.consumers.eda.source import main

__all__ = ["main"]

DOCUMENTATION = r"""
---
short_description: Receive the status changes and events of ansible-runner runs from a zmq-emitter bus.
description:
  - An ansible-rulebook event source plugin subscribing to a zmq-emitter broker's backend (or to
    runners in bind mode) for the status changes and Ansible events of ansible-runner runs.
  - Each event is the ansible-runner payload as published (C(event.event), C(event.event_data.host),
    C(event.status), C(event.runner_ident)), with C(meta.kind), C(meta.ident), C(meta.name),
    C(meta.topic), C(meta.publisher), C(meta.seq), C(meta.replayed) (it came from the broker's
    history, not live) and C(meta.uuid) (the same for the same message in every rulebook).
  - C(meta.hosts) is the event's host when it has one, so that run_playbook and job templates
    limit themselves to that host.
  - Messages that repeat are dropped; a gap in a publisher's sequence is fetched from the history
    (with O(history)); what is gone for good becomes an event of its own, with C(event.gap.publisher),
    C(event.gap.first), C(event.gap.last) and C(event.gap.count).
  - Needs the ansible-runner-zmq Python package in ansible-rulebook's environment.
options:
  endpoints:
    description:
      - The broker backends (or runners in bind mode) to subscribe to, as a list or a comma-separated
        string of tcp://HOST:PORT or ipc://PATH; several for a redundant pair of brokers.
    type: list
    elements: str
    default: ["tcp://127.0.0.1:5558"]
  kinds:
    description:
      - Which messages to queue, status changes and/or Ansible events.
    type: list
    elements: str
    choices: ["status", "event"]
    default: ["status", "event"]
  runs:
    description:
      - Only these runs (ansible-runner idents); filtered by ZeroMQ at the publishers. Gaps within
        them are not noticed (a publisher's sequence runs across all its runs).
    type: list
    elements: str
  events:
    description:
      - Only these Ansible events (such as runner_on_failed, runner_on_unreachable); status changes
        are not affected. Filtered by ZeroMQ when O(runs) is given, else in the source.
    type: list
    elements: str
  hosts:
    description:
      - Only the events of these hosts; status changes are not affected.
    type: list
    elements: str
  history:
    description:
      - The broker's history endpoint (tcp://BROKER:5559), to fetch gaps from and to replay.
        Off by default.
    type: str
  history_timeout:
    description:
      - Seconds to wait for the history's answer to one request.
    type: float
    default: 5.0
  replay:
    description:
      - At start, queue what the history holds of the runs (those of O(runs), else every run it
        knows), then go on live without a gap or a repeat at the seam. Needs O(history).
    type: bool
    default: false
  gap_events:
    description:
      - Queue an event for messages gone for good (C(event.gap)).
    type: bool
    default: true
  curve_server_key:
    description:
      - The broker's CURVE public key (a .key file or 40 z85 characters), to encrypt the
        connections and check the broker.
    type: str
  curve_secret_key_file:
    description:
      - This subscriber's CURVE key pair (zmq-emitter keygen), for a broker that admits only listed keys.
    type: str
"""

EXAMPLES = r"""
- zmq_emitter.eda.runner_events:
    endpoints: tcp://broker.example.com:5558
    history: tcp://broker.example.com:5559

- zmq_emitter.eda.runner_events:
    endpoints:
      - tcp://broker-a.example.com:5558
      - tcp://broker-b.example.com:5558
    events: [runner_on_failed, runner_on_unreachable]
    curve_server_key: /etc/zmq-emitter/broker.key
    curve_secret_key_file: /etc/zmq-emitter/eda.key_secret

- zmq_emitter.eda.runner_events:
    runs: ["{{ run_ident }}"]
    history: tcp://broker.example.com:5559
    replay: true
"""

if __name__ == "__main__":

    class MockQueue(asyncio.Queue):
        async def put(self, event: Any) -> None:
            print(event, flush=True)  # noqa: T201

    asyncio.run(main(MockQueue(), {"endpoints": sys.argv[1:] or ["tcp://127.0.0.1:5558"]}))
