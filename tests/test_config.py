"""Settings: env/settings versus RUNNER_ZMQ_* precedence, inactivity, and every error's message."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import ansible_runner
import pytest
from conftest import collect_run, run_cli, runner_env, wait_subscribed

import zmq_emitter
from zmq_emitter.runner import config
from zmq_emitter.broker import Broker
from zmq_emitter.runner.config import SETTINGS, load
from zmq_emitter.consumers.subscriber import Subscriber

SETTING_NAMES = [s.name for s in SETTINGS]


def write_settings(project, **zmq_settings) -> None:
    """Add runner_zmq_* keys to the project's env/settings (YAML), beside what is there."""
    settings = project / "env" / "settings"
    lines = [f"runner_zmq_{name}: {value!r}" for name, value in zmq_settings.items()]
    settings.write_text(settings.read_text() + "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------
# Precedence, resolved by config.load


def test_settings_file_keys_are_used_when_no_environment_variable_is_set():
    resolved = load({"runner_zmq_url": "ipc:///tmp/a, tcp://127.0.0.1:5557", "runner_zmq_codec": "msgpack",
                     "runner_zmq_sndhwm": 5, "runner_zmq_linger": "7", "runner_zmq_buffer_messages": 9,
                     "runner_zmq_buffer_bytes": 11, "runner_zmq_bind": "tcp://*:*"}, environ={})
    assert resolved == config.Config(url=("ipc:///tmp/a", "tcp://127.0.0.1:5557"), bind=("tcp://*:*",),
                                     codec="msgpack", sndhwm=5, linger=7, buffer_messages=9, buffer_bytes=11)


@pytest.mark.parametrize("name, file_value, env_value, expected", [
    ("url", "ipc:///tmp/file", "ipc:///tmp/env", ("ipc:///tmp/env",)),
    ("bind", "ipc:///tmp/file", "ipc:///tmp/env", ("ipc:///tmp/env",)),
    ("codec", "msgpack", "json", "json"),
    ("sndhwm", 5, "6", 6),
    ("linger", 5, "0", 0),
    ("buffer_messages", 5, "6", 6),
    ("buffer_bytes", 5, "6", 6),
])
def test_environment_variable_wins_over_the_settings_file(name, file_value, env_value, expected):
    resolved = load({f"runner_zmq_{name}": file_value}, environ={f"RUNNER_ZMQ_{name.upper()}": env_value})
    assert getattr(resolved, name) == expected


def test_an_invalid_settings_file_value_is_not_looked_at_when_the_environment_overrides_it():
    assert load({"runner_zmq_codec": "xml"}, environ={"RUNNER_ZMQ_CODEC": "msgpack"}).codec == "msgpack"


def test_unconfigured_means_inactive_with_defaults():
    resolved = load({}, environ={})
    assert not resolved.active
    assert resolved == config.Config()
    assert load(None, environ={"RUNNER_ZMQ_CODEC": "msgpack"}).active is False  # a codec alone does not enable


# ---------------------------------------------------------------------------------------
# Errors: ConfigError naming the setting, the value and what is accepted

BAD_VALUES = [
    # (setting, value, a fragment of what the message must say is accepted or wrong)
    ("url", "http://127.0.0.1:5557", "tcp:// or ipc://"),
    ("url", "127.0.0.1:5557", "tcp:// or ipc://"),
    ("url", "tcp://127.0.0.1:70000", "between 1 and 65535"),
    ("url", "tcp://127.0.0.1:0", "between 1 and 65535"),
    ("url", "tcp://127.0.0.1", "tcp://HOST:PORT"),
    ("url", "tcp://127.0.0.1:*", "tcp://HOST:PORT"),  # only a bind may use a wildcard port
    ("url", "ipc://", "needs a path"),
    ("url", "ipc:///tmp/ok,ipc://", "needs a path"),  # every endpoint of a list is checked
    ("bind", "udp://127.0.0.1:1", "tcp:// or ipc://"),
    ("bind", "tcp://127.0.0.1:99999", "between 1 and 65535"),
    ("bind", "ipc://", "needs a path"),
    ("url", " , ", "names no endpoint"),  # not silently off: a mistake, named
    ("bind", ",", "names no endpoint"),
    ("codec", "xml", "json, msgpack"),
    ("codec", "", "json, msgpack"),
    # libzmq's socket options are C ints: the setting's error, never pyzmq's OverflowError
    ("sndhwm", "99999999999999999999", "from 0 to 2147483647"),
    ("sndhwm", "2147483648", "from 0 to 2147483647"),
    ("linger", "99999999999", "0 to 2147483647"),
    ("buffer_messages", "0", "1 or more"),  # a buffer of none would lose the first message of every process
    ("buffer_bytes", "0", "1 or more"),
    ("url", "tcp://127.0.0.1:\u0669", "tcp://HOST:PORT"),  # libzmq refuses non-ASCII digits: refused here first
    ("heartbeat", "2000001", "out of range"),
    ("heartbeat", "\u0669", "whole number"),  # an Arabic-Indic 9: int() takes it, a setting must not
    ("sndhwm", "\uff11\uff10", "whole number"),  # fullwidth digits
] + [(name, value, "whole number" if name != "linger" else "milliseconds")
     for name in ("sndhwm", "linger", "buffer_messages", "buffer_bytes")
     for value in ("-1", "ten", "1.5", "")]


@pytest.mark.parametrize("source", ["settings file", "environment"])
@pytest.mark.parametrize("name, value, accepted", BAD_VALUES)
def test_bad_value_raises_config_error_naming_setting_value_and_what_is_accepted(name, value, accepted, source):
    key, env = f"runner_zmq_{name}", f"RUNNER_ZMQ_{name.upper()}"
    with pytest.raises(zmq_emitter.ConfigError) as info:
        if source == "environment":
            load({}, environ={env: value})
        else:
            load({key: value}, environ={})
    message = str(info.value)
    assert (env if source == "environment" else key) in message
    assert repr(value) in message or repr(value.split(",")[-1]) in message
    assert accepted in message
    setting = next(s for s in SETTINGS if s.name == name)
    assert f"accepted: {setting.accepts}" in message


@pytest.mark.parametrize("name, least, most", [("sndhwm", 0, 2**31 - 1), ("linger", 0, 2**31 - 1),
                                               ("buffer_messages", 1, None), ("buffer_bytes", 1, None)])
def test_numbers_from_the_settings_file_are_checked_too(name, least, most):
    for bad in (-5, True, 2.5, [1], least - 1) + ((most + 1, 10**20) if most else ()):
        with pytest.raises(zmq_emitter.ConfigError, match=f"runner_zmq_{name}"):
            load({f"runner_zmq_{name}": bad}, environ={})
    for good in (least, most or 10**20):
        assert getattr(load({f"runner_zmq_{name}": good}, environ={}), name) == good


@pytest.mark.parametrize("value", ["", "  ", []])
def test_an_empty_url_is_not_set_and_leaves_the_plugin_off(value):
    assert load({}, environ={"RUNNER_ZMQ_URL": value} if isinstance(value, str) else {}).active is False
    assert load({"runner_zmq_url": value}, environ={}).active is False


# What the handlers do with them: the named setting's ConfigError at the first call, before any socket
EDGE_SETTINGS = [
    ({"RUNNER_ZMQ_SNDHWM": "99999999999999999999"}, "RUNNER_ZMQ_SNDHWM: '99999999999999999999' is out of range"),
    ({"RUNNER_ZMQ_LINGER": "99999999999"}, "RUNNER_ZMQ_LINGER: '99999999999' is out of range"),
    ({"RUNNER_ZMQ_BUFFER_MESSAGES": "0"}, "RUNNER_ZMQ_BUFFER_MESSAGES: '0' is out of range"),
    ({"RUNNER_ZMQ_URL": " , "}, "RUNNER_ZMQ_URL: ' , ' names no endpoint"),
]


@pytest.mark.parametrize("environ, says", EDGE_SETTINGS, ids=[next(iter(e)) for e, _ in EDGE_SETTINGS])
def test_the_handlers_raise_the_named_settings_error_for_values_at_the_edges(
        environ, says, tmp_path, inprocess_env, fresh_plugin):
    inprocess_env.setenv("RUNNER_ZMQ_URL", f"ipc://{tmp_path}/nobody")
    for name, value in environ.items():
        inprocess_env.setenv(name, value)
    runner_config = SimpleNamespace(settings={})
    for handler, data in [(zmq_emitter.status_handler, {"status": "starting", "runner_ident": "edge"}),
                          (zmq_emitter.event_handler, {"event": "playbook_on_start", "runner_ident": "edge"})]:
        with pytest.raises(zmq_emitter.ConfigError) as info:
            handler(runner_config, data)
        message = str(info.value)
        assert message.startswith(f"zmq_emitter: environment variable {says}") and "; accepted: " in message
    assert fresh_plugin._publishers == {}


def test_a_settings_file_number_beyond_what_libzmq_takes_fails_the_run_with_the_settings_error(
        project, tmp_path, inprocess_env, fresh_plugin):
    write_settings(project, url=f"ipc://{tmp_path}/nobody", linger=99999999999)  # YAML: an int, not a string
    with pytest.raises(zmq_emitter.ConfigError, match=r"setting runner_zmq_linger \(env/settings\): "
                                                      r"99999999999 is out of range; accepted: milliseconds"):
        ansible_runner.run(private_data_dir=str(project), playbook="demo.yml", ident="edge-file", quiet=True)
    assert fresh_plugin._publishers == {}


@pytest.mark.parametrize("environ, says", EDGE_SETTINGS, ids=[next(iter(e)) for e, _ in EDGE_SETTINGS])
def test_values_at_the_edges_fail_the_ansible_runner_run_command_with_one_named_error_line(
        environ, says, project, tmp_path):
    env = runner_env(**{"RUNNER_ZMQ_URL": f"ipc://{tmp_path}/nobody", **environ})
    result = run_cli(project, "edge", env)
    assert result.returncode != 0
    # ansible-runner ends its traceback with the exception's line: that line is the whole message
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"zmq_emitter.runner.config.ConfigError: zmq_emitter: environment variable {says}"), \
        result.stderr
    assert "; accepted: " in last
    assert "OverflowError" not in result.stderr
    assert not (project / "artifacts" / "edge" / "job_events").exists() or \
        not any((project / "artifacts" / "edge" / "job_events").iterdir())


# ---------------------------------------------------------------------------------------
# The README's settings table is SETTINGS, row for row

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_settings_table_lists_every_setting_as_config_py_defines_it():
    # The docs site generates its table with config.settings_table(); README.md holds a copy.
    lines = README.read_text().splitlines()
    start = lines.index(config.SETTINGS_TABLE_HEADER)
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    expected = config.settings_table()
    assert "\n".join(lines[start:end]) == expected, \
        "README.md's settings table differs from config.SETTINGS; it should be:\n" + expected


def test_every_setting_is_a_field_of_config_with_the_same_default():
    fields = {f.name: f.default for f in dataclasses.fields(config.Config)}
    assert [s.attribute for s in SETTINGS] == list(fields)
    assert {s.attribute: s.default for s in SETTINGS} == fields


def test_config_error_is_the_packages_exported_error():
    assert zmq_emitter.ConfigError is config.ConfigError
    assert issubclass(zmq_emitter.ConfigError, ValueError)


# ---------------------------------------------------------------------------------------
# Real runs


def test_unconfigured_plugin_creates_no_socket_and_the_run_succeeds(project, inprocess_env, fresh_plugin):
    result = ansible_runner.run(private_data_dir=str(project), playbook="demo.yml", ident="quiet",
                                extravars={"fail_host": "none"}, quiet=True)
    assert (result.status, result.rc) == ("successful", 0)
    assert fresh_plugin._publishers == {}
    # the handlers were called (a route was resolved), and resolved to nothing
    routes = list(fresh_plugin._routes.values())
    assert routes and all(route.publisher is None for route in routes)


def test_settings_file_configures_a_real_run(project, broker, inprocess_env, fresh_plugin):
    write_settings(project, url=broker.frontend_endpoints[0], codec="msgpack")
    with Subscriber(broker.backend_endpoints) as sub:
        wait_subscribed(broker.frontend_endpoints[0], sub)
        result = ansible_runner.run(private_data_dir=str(project), playbook="demo.yml", ident="from-file",
                                    extravars={"fail_host": "none"}, quiet=True)
        messages = collect_run(sub, "from-file")
    assert result.status == "successful"
    assert [m.name for m in messages if m.kind == "status"] == ["starting", "running", "successful"]
    assert {m.codec for m in messages} == {"msgpack"}


def test_environment_wins_over_the_settings_file_in_a_real_run(project, broker, tmp_path, inprocess_env,
                                                                 fresh_plugin):
    with Broker([f"ipc://{tmp_path}/file-frontend"], [f"ipc://{tmp_path}/file-backend"],
                startup_grace=0) as file_broker:
        # the file names one broker and a codec; the environment names another broker only
        write_settings(project, url=file_broker.frontend_endpoints[0], codec="msgpack")
        inprocess_env.setenv("RUNNER_ZMQ_URL", broker.frontend_endpoints[0])
        with Subscriber(broker.backend_endpoints) as env_sub, Subscriber(file_broker.backend_endpoints) as file_sub:
            wait_subscribed(broker.frontend_endpoints[0], env_sub)
            wait_subscribed(file_broker.frontend_endpoints[0], file_sub)
            result = ansible_runner.run(private_data_dir=str(project), playbook="demo.yml", ident="env-wins",
                                        extravars={"fail_host": "none"}, quiet=True)
            messages = collect_run(env_sub, "env-wins")
            assert file_sub.recv(timeout=0.5) is None
    assert result.status == "successful"
    assert [m.name for m in messages if m.kind == "status"] == ["starting", "running", "successful"]
    assert {m.codec for m in messages} == {"msgpack"}  # what the environment does not set, the file still does
    # one socket, to the environment's broker only (a transport key starts with the url)
    assert [transport[0] for transport in fresh_plugin._publishers] == [(broker.frontend_endpoints[0],)]


def test_bad_setting_fails_the_ansible_runner_run_command_with_the_message(project, tmp_path):
    env = runner_env(RUNNER_ZMQ_URL=f"ipc://{tmp_path}/nobody", RUNNER_ZMQ_CODEC="xml")
    result = run_cli(project, "bad-codec", env)
    # ansible-runner calls status_handler("starting") before it starts anything; the plugin's
    # exception ends the command with an error, and the playbook never runs
    assert result.returncode != 0
    assert "zmq_emitter.runner.config.ConfigError: zmq_emitter: environment variable RUNNER_ZMQ_CODEC: 'xml' is not a codec; " \
           "accepted: json, msgpack" in result.stderr
    assert not (project / "artifacts" / "bad-codec" / "job_events").exists() or \
        not any((project / "artifacts" / "bad-codec" / "job_events").iterdir())


def test_bad_settings_file_value_makes_ansible_runner_run_raise(project, inprocess_env, fresh_plugin):
    write_settings(project, url="http://127.0.0.1:5557")
    with pytest.raises(zmq_emitter.ConfigError, match=r"runner_zmq_url.*'http://127.0.0.1:5557'.*tcp:// or ipc://"):
        ansible_runner.run(private_data_dir=str(project), playbook="demo.yml", ident="bad-url", quiet=True)
    assert fresh_plugin._publishers == {}
