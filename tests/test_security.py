"""Security with real sockets: CURVE encryption and authentication, key rotation, secrets kept
out of the `starting` status, owner-only ipc sockets.  Threat model and set-up: docs/security.md.

Run as a script, this file is the TCP relay the capture test puts between two localhost ports.
"""
from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from conftest import (BIN, PROBE, BrokerProcess, collect_run, job_events, receive, run_cli, runner_env, until_flowing,
                      wait_subscribed, wait_until)

from zmq_emitter.runner import plugin
from zmq_emitter import protocol, security
from zmq_emitter.runner import redact
from zmq_emitter.broker import Broker
from zmq_emitter.runner.config import Config, ConfigError, load
from zmq_emitter.consumers.subscriber import Subscriber

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq has no CURVE")

HANDSHAKE_END = {zmq.EVENT_HANDSHAKE_SUCCEEDED: "succeeded", zmq.EVENT_HANDSHAKE_FAILED_AUTH: "failed-auth",
                 zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "failed-protocol",
                 zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed-no-detail"}


# ---------------------------------------------------------------------------------------
# Helpers


class Keys:
    """Key pairs made by `zmq-emitter keygen`'s code, and the broker's two allow-lists."""

    def __init__(self, root: Path):
        self.root = root
        for name in ("broker", "runner", "reader", "rogue"):
            security.generate_keys(root / "all", name)
        self.publishers, self.subscribers = root / "publishers", root / "subscribers"
        self.publishers.mkdir()
        self.subscribers.mkdir()
        shutil.copy(root / "all" / "runner.key", self.publishers)
        shutil.copy(root / "all" / "reader.key", self.subscribers)

    def public(self, name: str) -> Path:
        return self.root / "all" / f"{name}.key"

    def secret(self, name: str) -> Path:
        return self.root / "all" / f"{name}.key_secret"

    def pair(self, name: str) -> security.KeyPair:
        return security.load_key_pair(self.secret(name))

    def server_curve(self, publishers: bool = True, subscribers: bool = True) -> security.ServerCurve:
        return security.ServerCurve.load(self.secret("broker"), self.publishers if publishers else None,
                                         self.subscribers if subscribers else None)


@pytest.fixture
def keys(tmp_path) -> Keys:
    return Keys(tmp_path / "keys")


@pytest.fixture
def curve_broker(tmp_path, keys):
    instance = Broker([f"ipc://{tmp_path}/frontend"], [f"ipc://{tmp_path}/backend"], startup_grace=0,
                      curve=keys.server_curve()).start()
    instance.wait_forwarding(5)
    yield instance
    instance.stop()


def handshake(sock: zmq.Socket, endpoint: str, timeout: float = 10.0) -> str:
    """Connect ``sock`` and return how its first handshake ended (see HANDSHAKE_END)."""
    monitor = sock.get_monitor_socket()
    try:
        sock.connect(endpoint)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if monitor.poll(100):
                event = recv_monitor_message(monitor)["event"]
                if event in HANDSHAKE_END:
                    return HANDSHAKE_END[event]
        return "no handshake"
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


def publisher(endpoint: str, server_key: bytes = b"", pair: security.KeyPair | None = None) -> plugin.Publisher:
    """The plugin's own Publisher, configured as runner_zmq_* settings would configure it."""
    return plugin.Publisher(Config(url=(endpoint,), curve_server_key=server_key, curve_key_pair=pair,
                                   linger=0))


def publish(pub: plugin.Publisher, ident: str, name: str, payload: dict) -> None:
    pub.send(protocol.topic("status", ident, name), pub.header_prefix("json"), protocol.encode_json(payload))


def probe(pub: plugin.Publisher):
    """What ``until_flowing`` calls to send one probe through the plugin's own publisher."""
    return lambda: publish(pub, PROBE, "probe", {"probe": True})


# ---------------------------------------------------------------------------------------
# Keys


def test_keygen_writes_a_zmq_auth_key_pair_with_an_owner_only_secret_file(tmp_path):
    run = lambda *args: subprocess.run([str(BIN / "zmq-emitter"), "keygen", *args], capture_output=True, text=True)
    result = run("runner-1", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    public, secret = zmq.auth.load_certificate(tmp_path / "runner-1.key_secret")
    assert zmq.auth.load_certificate(tmp_path / "runner-1.key") == (public, None)
    assert len(public) == len(secret) == 40
    assert stat.S_IMODE((tmp_path / "runner-1.key_secret").stat().st_mode) == 0o600
    assert public.decode() in result.stdout and secret.decode() not in result.stdout

    again = run("runner-1", "--dir", str(tmp_path))
    assert again.returncode == 1 and "exist already" in again.stderr and "Traceback" not in again.stderr
    assert zmq.auth.load_certificate(tmp_path / "runner-1.key_secret") == (public, secret)  # not overwritten
    assert run("runner-1", "--dir", str(tmp_path), "--force").returncode == 0
    assert zmq.auth.load_certificate(tmp_path / "runner-1.key_secret")[0] != public


def test_bad_key_settings_are_refused_with_the_setting_named(keys, tmp_path):
    with pytest.raises(ConfigError, match="RUNNER_ZMQ_CURVE_SERVER_KEY"):
        load({}, {"RUNNER_ZMQ_URL": "tcp://127.0.0.1:5557", "RUNNER_ZMQ_CURVE_SERVER_KEY": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="runner_zmq_curve_secret_key_file.*no secret key"):
        load({"runner_zmq_url": "tcp://127.0.0.1:5557", "runner_zmq_curve_server_key": str(keys.public("broker")),
              "runner_zmq_curve_secret_key_file": str(keys.public("runner"))}, {})
    with pytest.raises(ConfigError, match="needs runner_zmq_curve_server_key"):
        load({"runner_zmq_url": "tcp://127.0.0.1:5557",
              "runner_zmq_curve_secret_key_file": str(keys.secret("runner"))}, {})
    config = load({"runner_zmq_url": "tcp://127.0.0.1:5557",
                   "runner_zmq_curve_server_key": keys.pair("broker").public.decode(),  # z85 text works too
                   "runner_zmq_curve_secret_key_file": str(keys.secret("runner"))}, {})
    assert config.curve_server_key == keys.pair("broker").public
    assert keys.pair("runner").secret.decode() not in repr(config)  # never in logs or tracebacks


# ---------------------------------------------------------------------------------------
# CURVE: who gets in


def test_subscribers_without_the_right_key_receive_nothing_while_the_authorised_one_gets_everything(
        curve_broker, keys):
    server = keys.pair("broker").public
    rogues = {}
    ctx = zmq.Context()
    try:
        for name, setup in {
            "plain (NULL mechanism)": lambda s: None,
            "unlisted key": lambda s: security.curve_client(s, server, keys.pair("rogue")),
            "no own key": lambda s: security.curve_client(s, server),
            "wrong server key": lambda s: security.curve_client(s, keys.pair("rogue").public, keys.pair("reader")),
        }.items():
            sock = ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            setup(sock)
            outcome = handshake(sock, curve_broker.backend_endpoints[0])
            assert outcome.startswith("failed"), (name, outcome)
            rogues[name] = sock

        with Subscriber(curve_broker.backend_endpoints, curve_server_key=str(keys.public("broker")),
                        curve_secret_key_file=str(keys.secret("reader"))) as sub:
            pub = publisher(curve_broker.frontend_endpoints[0], server, keys.pair("runner"))
            try:
                until_flowing([sub], probe(pub))
                for i in range(200):
                    publish(pub, "secret-run", "running", {"i": i})
                assert [m.payload["i"] for m in receive(sub, 200, "secret-run", timeout=20)] == list(range(200))
            finally:
                pub.close()
        for name, sock in rogues.items():
            assert not sock.poll(500), f"{name} subscriber received something"
    finally:
        for sock in rogues.values():
            sock.close(linger=0)
        ctx.destroy(linger=0)


def test_publishers_without_the_right_key_inject_nothing_while_the_authorised_one_gets_through(curve_broker, keys):
    server = keys.pair("broker").public
    ctx = zmq.Context()
    rogues = {}
    try:
        with Subscriber(curve_broker.backend_endpoints, curve_server_key=server,
                        curve_secret_key_file=str(keys.secret("reader"))) as sub:
            for name, setup in {
                "plain (NULL mechanism)": lambda s: None,
                "unlisted key": lambda s: security.curve_client(s, server, keys.pair("rogue")),
                "a subscriber's key": lambda s: security.curve_client(s, server, keys.pair("reader")),
            }.items():
                sock = ctx.socket(zmq.PUB)  # a PUB whose peer would subscribe sends at once
                setup(sock)
                outcome = handshake(sock, curve_broker.frontend_endpoints[0])
                assert outcome.startswith("failed"), (name, outcome)
                rogues[name] = sock
            good = publisher(curve_broker.frontend_endpoints[0], server, keys.pair("runner"))
            try:
                until_flowing([sub], probe(good))
                for round_ in range(50):
                    for name, sock in rogues.items():
                        sock.send_multipart([protocol.topic("status", "injected", "failed"),
                                             b'{"v":1,"codec":"json","pub":"rogue","seq":%d}' % (round_ + 1),
                                             b'{"from": "%s"}' % name.encode()])
                    publish(good, "genuine", "running", {"i": round_})
                got = receive(sub, 50, "genuine", timeout=20)
                assert [m.payload["i"] for m in got] == list(range(50))
                assert sub.recv(timeout=0.5) is None
                assert sub.counts.invalid == 0 and all(m.ident != "injected" for m in got)
            finally:
                good.close()
    finally:
        for sock in rogues.values():
            sock.close(linger=0)
        ctx.destroy(linger=0)


def test_a_broker_admitting_any_key_still_encrypts_but_lets_unlisted_keys_in(tmp_path, keys):
    """The control for the two tests above: without a key directory the same rogue key gets through."""
    curve = keys.server_curve(publishers=False, subscribers=False)
    with Broker([f"ipc://{tmp_path}/f"], [f"ipc://{tmp_path}/b"], startup_grace=0, curve=curve) as broker:
        broker.wait_forwarding(5)
        server = keys.pair("broker").public
        with Subscriber(broker.backend_endpoints, curve_server_key=server,
                        curve_secret_key_file=str(keys.secret("rogue"))) as sub:
            pub = publisher(broker.frontend_endpoints[0], server, keys.pair("rogue"))
            try:
                until_flowing([sub], probe(pub))
            finally:
                pub.close()
        ctx = zmq.Context()
        plain = ctx.socket(zmq.SUB)
        try:
            assert handshake(plain, broker.backend_endpoints[0]).startswith("failed")  # never plain, even then
        finally:
            plain.close(linger=0)
            ctx.destroy(linger=0)


def test_a_removed_key_is_refused_from_the_next_connection_on_and_an_added_one_admitted(curve_broker, keys):
    server = keys.pair("broker").public
    ctx = zmq.Context()
    socks = []

    def attempt(side: str, name: str) -> str:
        sock = ctx.socket(zmq.SUB if side == "backend" else zmq.PUB)
        socks.append(sock)
        security.curve_client(sock, server, keys.pair(name))
        return handshake(sock, getattr(curve_broker, f"{side}_endpoints")[0])

    try:
        assert attempt("backend", "reader") == "succeeded"
        assert attempt("frontend", "runner") == "succeeded"
        (keys.subscribers / "reader.key").unlink()
        (keys.publishers / "runner.key").unlink()
        assert attempt("backend", "reader") == "failed-auth"
        assert attempt("frontend", "runner") == "failed-auth"
        shutil.copy(keys.public("rogue"), keys.subscribers / "newcomer.key")
        assert attempt("backend", "rogue") == "succeeded"
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.destroy(linger=0)


def test_broker_and_tail_commands_speak_curve_end_to_end(tmp_path, keys):
    broker = BrokerProcess(f"ipc://{tmp_path}/f", f"ipc://{tmp_path}/b", "--startup-grace", "0",
                           "--curve-secret-key-file", str(keys.secret("broker")), "--publisher-keys", str(keys.publishers),
                           "--subscriber-keys", str(keys.subscribers), history="none")
    try:
        wait_until(lambda: "CURVE on" in broker.stderr(), 10, message="the broker's CURVE line")
        assert keys.pair("broker").public.decode() in broker.stderr(), broker.stderr()
        tail = subprocess.Popen([str(BIN / "zmq-emitter"), "tail", "--connect", f"ipc://{tmp_path}/b",
                                 "--format", "json", "--ident", "tailed", "--count", "1",
                                 "--curve-server-key", str(keys.public("broker")),
                                 "--curve-secret-key-file", str(keys.secret("reader"))],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pub = publisher(f"ipc://{tmp_path}/f", keys.pair("broker").public, keys.pair("runner"))
        try:
            deadline = time.monotonic() + 30
            while tail.poll() is None and time.monotonic() < deadline:
                publish(pub, "tailed", "running", {"status": "running", "note": "through CURVE"})
                time.sleep(0.05)
        finally:
            pub.close()
        out, err = tail.communicate(timeout=10)
        assert tail.returncode == 0, err
        assert json.loads(out.splitlines()[0])["note"] == "through CURVE"
    finally:
        broker.stop()


def test_tail_with_an_unusable_key_says_so_without_a_traceback(tmp_path):
    result = subprocess.run([str(BIN / "zmq-emitter"), "tail", "--curve-server-key", str(tmp_path / "missing.key")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "missing.key" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------
# What is on the wire


def relay_main(target_port: int, record: str) -> None:
    """Forward every connection to 127.0.0.1:target_port, appending both directions' bytes to ``record``."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    peers: dict[socket.socket, socket.socket] = {}
    with open(record, "ab", buffering=0) as out:
        while True:
            for key, _ in sel.select():
                sock = key.fileobj
                if sock is listener:
                    client, _ = listener.accept()
                    upstream = socket.create_connection(("127.0.0.1", target_port))
                    peers[client], peers[upstream] = upstream, client
                    sel.register(client, selectors.EVENT_READ)
                    sel.register(upstream, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                other = peers.get(sock)
                if not data or other is None:
                    for s in (sock, other):
                        if s is not None and s in peers:
                            sel.unregister(s)
                            peers.pop(s)
                            s.close()
                    continue
                out.write(data)
                other.sendall(data)


class Relay:
    def __init__(self, target_endpoint: str, record: Path):
        self.proc = subprocess.Popen([sys.executable, __file__, target_endpoint.rsplit(":", 1)[1], str(record)],
                                     stdout=subprocess.PIPE, text=True)
        self.endpoint = f"tcp://127.0.0.1:{int(self.proc.stdout.readline())}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_with_curve_the_loopback_traffic_of_a_real_run_never_contains_the_payload(tmp_path, project, keys, curve):
    marker = f"visible-marker-{os.getpid()}-{curve}"  # a non-secret name: redaction leaves it in the payload
    record = tmp_path / "wire.bin"
    server_curve = keys.server_curve() if curve else None
    with Broker(["tcp://127.0.0.1:0"], ["tcp://127.0.0.1:0"], startup_grace=0, curve=server_curve) as broker:
        broker.wait_forwarding(5)
        to_frontend, to_backend = Relay(broker.frontend_endpoints[0], record), Relay(broker.backend_endpoints[0], record)
        try:
            client = dict(curve_server_key=str(keys.public("broker")),
                          curve_secret_key_file=str(keys.secret("reader"))) if curve else {}
            with Subscriber(to_backend.endpoint, **client) as sub:
                # probes through the relays as a runner with the same settings would publish
                prober = publisher(to_frontend.endpoint, *(keys.pair("broker").public, keys.pair("runner"))[:2 * curve])
                try:
                    until_flowing([sub], probe(prober))
                finally:
                    prober.close()
                settings = {"RUNNER_ZMQ_URL": to_frontend.endpoint, "ZMQ_TEST_MARKER": marker}
                if curve:
                    settings.update(RUNNER_ZMQ_CURVE_SERVER_KEY=str(keys.public("broker")),
                                    RUNNER_ZMQ_CURVE_SECRET_KEY_FILE=str(keys.secret("runner")))
                result = run_cli(project, "wire", runner_env(**settings))
                assert result.returncode == 2, result.stderr
                messages = collect_run(sub, "wire")
        finally:
            to_frontend.stop()
            to_backend.stop()
    starting = next(m for m in messages if m.name == "starting")
    assert starting.payload["env"]["ZMQ_TEST_MARKER"] == marker  # the payload carried it both times
    wire = record.read_bytes()
    assert len(wire) > 10_000  # the whole run went through the relays
    assert (marker.encode() in wire) is (not curve)
    assert (b"runner_on_ok" in wire) is (not curve)


# ---------------------------------------------------------------------------------------
# Secrets out of the `starting` status


def test_a_real_run_publishes_no_secret_of_its_environment_and_changes_nothing_else(project, broker):
    secrets = {"DB_PASSWORD": "pw-4b1d", "GITHUB_TOKEN": "tok-93ab", "aws_secret_access_key": "aws-77c2",
               "MY_CUSTOM_THING": "custom-5e5e"}
    proxy = "http://proxyuser:proxy-0f0f@proxy.example:3128"
    (project / "env" / "envvars").write_text("VAULT_PASSPHRASE: vault-c0de\n")  # ansible-runner's own env file
    with Subscriber(broker.backend_endpoints) as sub:
        wait_subscribed(broker.frontend_endpoints[0], sub)
        env = runner_env(RUNNER_ZMQ_URL=broker.frontend_endpoints[0], RUNNER_ZMQ_REDACT_NAMES="custom_thing",
                         HTTPS_PROXY=proxy, **secrets)
        result = run_cli(project, "secret-run", env)
        assert result.returncode == 2, result.stderr
        messages = collect_run(sub, "secret-run")
    leaked = [value for value in [*secrets.values(), "vault-c0de", "proxy-0f0f"]
              for m in messages if value.encode() in m.topic + m.raw_payload]
    assert leaked == []
    published_env = next(m for m in messages if m.name == "starting").payload["env"]
    for name in [*secrets, "VAULT_PASSPHRASE"]:
        assert published_env[name] == redact.REDACTED
    assert published_env["HTTPS_PROXY"] == f"http://{redact.REDACTED}@proxy.example:3128"
    assert published_env["PATH"] == env["PATH"]  # ordinary variables are kept

    # Nothing else changed: the events equal the artifacts, and the env ansible-runner
    # wrote to its artifacts after the `starting` status still has the real values.
    assert [m.payload for m in messages if m.kind == "event"] == job_events(project, "secret-run")
    written_env = json.loads((project / "artifacts" / "secret-run" / "command").read_text())["env"]
    assert {name: written_env[name] for name in secrets} == secrets
    assert written_env["VAULT_PASSPHRASE"] == "vault-c0de" and written_env["HTTPS_PROXY"] == proxy


def test_a_real_run_publishes_no_secret_of_its_command_line_extra_vars_and_changes_nothing_else(project, broker):
    cmdline = ("-e 'db_password=\"pw 4b1d\" region=eu-west' --extra-vars='{\"vault\": {\"api_token\": \"tok-93ab\"}, "
               "\"size\": 3}' -eMY_CUSTOM_THING=custom-5e5e -e '{aws_secret_access_key: aws-77c2}' "
               "-e repo=https://deploy:pat-0f0f@git.example/x.git")
    secrets = ["pw 4b1d", "tok-93ab", "custom-5e5e", "aws-77c2", "pat-0f0f"]
    with Subscriber(broker.backend_endpoints) as sub:
        wait_subscribed(broker.frontend_endpoints[0], sub)
        env = runner_env(RUNNER_ZMQ_URL=broker.frontend_endpoints[0], RUNNER_ZMQ_REDACT_NAMES="custom_thing")
        result = run_cli(project, "cmdline-run", env, cmdline=cmdline)
        assert result.returncode == 2, result.stderr
        messages = collect_run(sub, "cmdline-run")
    starting = next(m for m in messages if m.name == "starting")
    assert [s for s in secrets if s.encode() in starting.raw_payload] == []
    command = starting.payload["command"]
    assert command[:4] == ["ansible-playbook", "-e", "fail_host=web2", "-e"]
    assert command[4:9] == [f"db_password={redact.REDACTED} region=eu-west",
                            f'--extra-vars={{"vault": {{"api_token": "{redact.REDACTED}"}}, "size": 3}}',
                            f"-eMY_CUSTOM_THING={redact.REDACTED}", "-e", redact.REDACTED]  # YAML: withheld whole
    assert command[9:11] == ["-e", f"repo=https://{redact.REDACTED}@git.example/x.git"]
    assert command[-1] == "demo.yml"
    # ansible-playbook got the real values: ansible-runner's own record of the command is unchanged
    written = json.loads((project / "artifacts" / "cmdline-run" / "command").read_text())["command"]
    assert "db_password=\"pw 4b1d\" region=eu-west" in written and len(written) == len(command)
    assert [m.payload for m in messages if m.kind == "event"] == job_events(project, "cmdline-run")


R = redact.REDACTED


@pytest.mark.parametrize("command, published", [
    (["-e", "db_password=x user=me"], ["-e", f"db_password={R} user=me"]),
    (["-e", "pass=1 api_token='a b' x=\"c d\""], ["-e", f"pass=1 api_token={R} x=\"c d\""]),
    (["--extra-vars", "auth=1"], ["--extra-vars", f"auth={R}"]),
    (["--extra-vars=auth=1"], [f"--extra-vars=auth={R}"]),
    (["--extra", "auth=1"], ["--extra", f"auth={R}"]),                      # argparse's abbreviation
    (["-eauth=1"], [f"-eauth={R}"]),                                       # value attached
    (["-e=auth=1"], [f"-e=auth={R}"]),
    (["-vvCe", "auth=1"], ["-vvCe", f"auth={R}"]),                          # after flags without a value
    (["-a", "name=u password=x"], ["-a", f"name=u password={R}"]),          # ansible's module arguments
    (["-e", '{"a": [{"Token": 1}], "b": 2}'], ["-e", f'{{"a": [{{"Token": "{R}"}}], "b": 2}}']),
    (["-e", '{"b": 2}'], ["-e", '{"b": 2}']),                               # nothing secret: as it was
    (["-e", "{db_password: x}"], ["-e", R]),                                # YAML: withheld whole
    (["-e", "{region: eu}"], ["-e", "{region: eu}"]),
    (["-e", 'x="unclosed db_password=x'], ["-e", R]),                       # cannot be split: withheld
    (["-e", "@secrets.yml", "-e@vault_password.yml"], ["-e", "@secrets.yml", "-e@vault_password.yml"]),
    (["-i", "https://me:pw@inv.example/x"], ["-i", f"https://{R}@inv.example/x"]),
    (["-u", "keyholder", "-l", "password_hosts", "db_password=x"], ["-u", "keyholder", "-l", "password_hosts",
                                                                    "db_password=x"]),  # not variables
    (["-e"], ["-e"]),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_secret_looking_variables_of_the_command_line_are_redacted_in_each_form_ansible_accepts(command, published):
    full = ["ansible-playbook", *command, "site.yml"]
    before = list(full)
    assert redact.redact_command(full) == ["ansible-playbook", *published, "site.yml"]
    assert full == before


def test_a_command_that_is_not_a_list_is_withheld_if_it_names_a_secret():
    assert redact.redact_command("ansible-playbook -e db_password=x") == R
    assert redact.redact_command("ansible-playbook site.yml") == "ansible-playbook site.yml"


def test_with_redaction_off_the_command_line_is_published_as_it_was(project, broker):
    with Subscriber(broker.backend_endpoints) as sub:
        wait_subscribed(broker.frontend_endpoints[0], sub)
        env = runner_env(RUNNER_ZMQ_URL=broker.frontend_endpoints[0], RUNNER_ZMQ_REDACT="false")
        result = run_cli(project, "cmdline-plain", env, cmdline="-e db_password=hunter2", fail_host="none")
        assert result.returncode == 0, result.stderr
        messages = collect_run(sub, "cmdline-plain")
    assert "db_password=hunter2" in next(m for m in messages if m.name == "starting").payload["command"]


@pytest.mark.parametrize("settings, expected_env", [
    ({"runner_zmq_send_env": "false"}, None),
    ({"runner_zmq_redact": "false"}, {"API_KEY": "k-1", "LANG": "C"}),
    ({}, {"API_KEY": redact.REDACTED, "LANG": "C"}),
], ids=["send_env off", "redaction off", "default"])
def test_redaction_settings_and_the_callers_dict_is_never_modified(broker, settings, expected_env):
    runner_config = types.SimpleNamespace(settings={"runner_zmq_url": broker.frontend_endpoints[0], **settings})
    env = {"API_KEY": "k-1", "LANG": "C"}
    command = ["ansible-playbook", "-e", "api_key=k-2 lang=C", "-e", "@vars.yml", "site.yml"]
    data = {"status": "starting", "runner_ident": "redact", "command": command, "env": env, "cwd": "/"}
    snapshot = json.loads(json.dumps(data))
    with Subscriber(broker.backend_endpoints) as sub:
        wait_subscribed(broker.frontend_endpoints[0], sub)
        plugin.status_handler(runner_config, data)
        # The publisher keeps what it sends before the broker's subscription arrived; flush
        # hands it over (at a process's exit, atexit does the same).
        assert plugin._routes[id(runner_config)].publisher.flush(10)
        msg = sub.recv(timeout=10)
    assert data == snapshot and data["env"] is env and data["command"] is command  # ansible-runner's dict, as it was
    assert msg is not None and msg.name == "starting"
    assert msg.payload.get("env") == expected_env
    redacted = settings.get("runner_zmq_redact") != "false"
    assert msg.payload["command"] == ["ansible-playbook", "-e", f"api_key={redact.REDACTED if redacted else 'k-2'} lang=C",
                                      "-e", "@vars.yml", "site.yml"]


# ---------------------------------------------------------------------------------------
# ipc:// socket files


def _connect_as_nobody(path: str) -> str:
    # A system python: the test's own may live where user nobody cannot read (/root/...).
    code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
            "try:\n s.connect(sys.argv[1]); print('connected')\nexcept PermissionError: print('denied')")
    result = subprocess.run([shutil.which("python3", path="/usr/bin:/bin") or sys.executable, "-c", code, path],
                            capture_output=True, text=True, timeout=30, user=65534, group=65534)
    return result.stdout.strip() or result.stderr


@pytest.fixture
def ipc_sockets():
    """A directory others may enter, with the socket files of two brokers and two plugins bound in it:
    b, f and runner with the default mode; open-b, open-f and runner-open with 0666 asked for."""
    shared = Path(tempfile.mkdtemp(prefix="zmq-emitter-ipc-", dir="/tmp"))
    try:
        shared.chmod(0o755)  # only the socket's own mode protects it
        with Broker([f"ipc://{shared}/f"], [f"ipc://{shared}/b"], startup_grace=0):
            with Broker([f"ipc://{shared}/open-f"], [f"ipc://{shared}/open-b"], startup_grace=0, ipc_mode=0o666):
                pub = plugin.Publisher(load({"runner_zmq_bind": f"ipc://{shared}/runner"}, {}))
                open_pub = plugin.Publisher(load({"runner_zmq_bind": f"ipc://{shared}/runner-open",
                                                  "runner_zmq_ipc_mode": "0666"}, {}))
                try:
                    yield shared
                finally:
                    pub.close()
                    open_pub.close()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_ipc_sockets_of_broker_and_plugin_are_owner_only_unless_a_setting_says_otherwise(ipc_sockets):
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in ipc_sockets.iterdir()}
    assert modes == {"f": 0o600, "b": 0o600, "runner": 0o600, "open-f": 0o666, "open-b": 0o666, "runner-open": 0o666}


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another user (nobody) needs root")
def test_another_user_cannot_connect_to_an_owner_only_ipc_socket_and_can_to_an_open_one(ipc_sockets):
    # root ignores modes itself, but can ask as another user
    assert _connect_as_nobody(str(ipc_sockets / "b")) == "denied"
    assert _connect_as_nobody(str(ipc_sockets / "runner")) == "denied"
    assert _connect_as_nobody(str(ipc_sockets / "open-b")) == "connected"


if __name__ == "__main__":
    relay_main(int(sys.argv[1]), sys.argv[2])
