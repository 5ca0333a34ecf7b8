"""The plugin's settings: read once per runner configuration, validated, with clear errors.

Like the HTTP emitter's, every setting is a key ``runner_zmq_<name>`` in the runner
settings file (``env/settings``, which ansible-runner hands over as
``runner_config.settings``), and the environment variable ``RUNNER_ZMQ_<NAME>``
overrides it.  With neither ``runner_zmq_url`` nor ``runner_zmq_bind`` set the plugin
is inactive.

    >>> from zmq_emitter.runner.config import load
    >>> load({"runner_zmq_url": "tcp://broker:5557"}, environ={}).url
    ('tcp://broker:5557',)
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Mapping

from .. import protocol, security
from .._text import check_endpoint, split_commas

DEFAULT_FRONTEND = "tcp://127.0.0.1:5557"  # where `zmq-emitter broker` listens for runners
DEFAULT_MAX_MESSAGE_SIZE = 16 * 2**20      # `zmq-emitter broker --max-message-size` by default
MIN_MESSAGE_SIZE = 4096                    # room for an oversize notice (oversize.py)
DEFAULT_SPOOL = "$XDG_STATE_HOME/zmq-emitter/spool"  # ~/.local/state/zmq-emitter/spool without XDG_STATE_HOME


class ConfigError(ValueError):
    """A setting has a value the plugin cannot use; the message names it and what is accepted."""


def _endpoints(bind: bool) -> Callable[[Any], tuple[str, ...]]:
    def parse(value: Any) -> tuple[str, ...]:
        endpoints = split_commas(value)
        # Empty is "not set" (the plugin is off); a value with only commas in it is a mistake
        # that would turn the plugin off silently.
        items = value if isinstance(value, (list, tuple)) else [value]
        if not endpoints and any(str(item).strip() for item in items):
            raise ValueError(f"{value!r} names no endpoint (to turn the plugin off, leave the setting out or empty)")
        for endpoint in endpoints:
            problem = check_endpoint(endpoint, bind=bind)
            if problem:
                raise ValueError(f"{endpoint!r}: {problem}")
        return endpoints

    return parse


C_INT_MAX = 2**31 - 1  # libzmq's socket options (SNDHWM, LINGER) are C ints
MAX_HEARTBEAT = 2_000_000  # ms: 3 times it must fit ZMQ_HEARTBEAT_TTL (deciseconds in 16 bits: 6553.5 s)


def _whole(low: int, high: int | None = None) -> Callable[[Any], int]:
    """A parser of whole numbers from ``low`` to ``high`` (None: no upper bound)."""
    def parse(value: Any) -> int:
        # [0-9], not \d: int() would read any script's digits ("\u0669" is 9), a typo taken as a value.
        if isinstance(value, bool) or not re.fullmatch(r"\s*[0-9]+\s*", str(value)):
            raise ValueError(f"{value!r} is not a whole number")
        number = int(value)
        if number < low or (high is not None and number > high):
            raise ValueError(f"{value!r} is out of range")
        return number
    return parse


_count = _whole(0)  # 0 or more


def _message_size(value: Any) -> int:
    size = _count(value)
    if size < MIN_MESSAGE_SIZE:
        raise ValueError(f"{value!r} is below {MIN_MESSAGE_SIZE} bytes")
    return size


def _spool(value: Any) -> str | None:
    text = str(value).strip()
    if text.lower() == "none":
        return None
    if not text:
        raise ValueError("an empty path")
    return text if text == DEFAULT_SPOOL else os.path.abspath(os.path.expanduser(text))


def spool_directory(value: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The spool directory a ``Config.spool`` value names: ``$XDG_STATE_HOME`` resolved, or None (off)."""
    if value != DEFAULT_SPOOL:
        return value
    environ = os.environ if environ is None else environ
    state = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "zmq-emitter", "spool")


def _codec(value: Any) -> str:
    codec = str(value).strip().lower()
    if codec not in protocol.CODECS:
        raise ValueError(f"{value!r} is not a codec")
    return codec




def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not true or false")


def _server_key(value: Any) -> bytes:
    text = str(value).strip()
    if not text:
        return b""
    try:
        return security.load_public_key(os.path.expanduser(text))
    except security.SecurityError as exc:
        raise ValueError(str(exc)) from None


def _key_pair(value: Any) -> security.KeyPair | None:
    text = str(value).strip()
    if not text:
        return None
    try:
        return security.load_key_pair(os.path.expanduser(text))
    except security.SecurityError as exc:
        raise ValueError(str(exc)) from None


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    accepts: str
    help: str
    field: str = ""  # the Config attribute, when it is not ``name``
    shown: str = ""  # the default as the README shows it, when str(default) would not do

    @property
    def attribute(self) -> str:
        return self.field or self.name

    @property
    def shown_default(self) -> str:
        if self.shown:
            return self.shown
        if self.default in ((), b"", None):
            return "(none)"
        return str(self.default).lower() if isinstance(self.default, bool) else str(self.default)

    @property
    def key(self) -> str:
        return f"runner_zmq_{self.name}"

    @property
    def env(self) -> str:
        return self.key.upper()


# The single list of settings; the README's settings table must match it row for row (tests/test_config.py).
SETTINGS = (
    Setting("url", _endpoints(bind=False), (), "comma-separated tcp://HOST:PORT or ipc://PATH",
            "Endpoints to connect the PUB socket to, normally a broker's frontend "
            f"(`zmq-emitter broker` listens on {DEFAULT_FRONTEND})."),
    Setting("bind", _endpoints(bind=True), (), "comma-separated tcp://HOST:PORT or ipc://PATH",
            "Endpoints to bind, so subscribers connect straight to the runner process (no broker)."),
    Setting("codec", _codec, "json", "json, msgpack", "Payload encoding; json is encoded with orjson."),
    Setting("sndhwm", _whole(0, C_INT_MAX), 1000, f"a whole number from 0 to {C_INT_MAX}, 0 = unlimited",
            "ZeroMQ send high-water mark: messages queued in libzmq per peer before the plugin's own buffer takes over."),
    Setting("linger", _whole(0, C_INT_MAX), 1000, f"milliseconds, 0 to {C_INT_MAX}",
            "At process exit, how long to wait for queued messages to be delivered (and acknowledged)."),
    # 100000: the bytes bound is the one that holds for events of ~700 B and more; the count leaves a broker's
    # history room to lag through a burst of small events (it catches up when the burst ends) without the
    # plugin pushing out what the broker has but did not acknowledge yet.
    Setting("buffer_messages", _whole(1), 100000, "a whole number, 1 or more",
            "The plugin's buffer (messages not sent yet, or sent but not acknowledged by the broker): at most this "
            "many (for events of ~700 B and more runner_zmq_buffer_bytes binds first); what it pushes out is counted "
            "and reported."),
    Setting("buffer_bytes", _whole(1), 64 * 2**20, "bytes, 1 or more",
            "The same buffer's bound in payload bytes."),
    Setting("max_message_size", _message_size, DEFAULT_MAX_MESSAGE_SIZE, f"bytes, at least {MIN_MESSAGE_SIZE}",
            "The largest payload sent as it is; a larger event is sent with its large values cut and a "
            "zmq_emitter_truncated marker (docs/protocol.md). A broker's smaller --max-message-size is learnt "
            "from its presence."),
    Setting("reconnect_wait", _count, 5000, "milliseconds",
            "At process exit, how long to wait for a broker that has acknowledged before and is away "
            "(restarting) to come back, before spooling what it has not acknowledged."),
    Setting("heartbeat", _whole(0, MAX_HEARTBEAT), 2000, f"milliseconds, 0 to {MAX_HEARTBEAT}, 0 = off",
            "How often to check each broker connection (ZeroMQ heartbeats): one silent for 3 times this is "
            "dropped, so a broker host cut off the network never holds back the others (docs/reliability.md)."),
    Setting("spool", _spool, DEFAULT_SPOOL, "a directory, or none",
            "Where what was not acknowledged (or, with a broker that does not acknowledge, delivered) by "
            "process exit is kept, to be sent first by the next process with the same runner_zmq_url "
            "(~/.local/state/zmq-emitter/spool without XDG_STATE_HOME)."),
    Setting("spool_messages", _count, 100000, "a whole number",
            "The spool's bound per destination in messages; beyond it the oldest are dropped, counted and "
            "reported on stderr."),
    Setting("spool_bytes", _count, 256 * 2**20, "bytes",
            "The spool's bound per destination in bytes."),
    # Security (security.py, docs/security.md)
    Setting("curve_server_key", _server_key, b"", "a .key file or 40 z85 characters",
            "The broker's CURVE public key: encrypt the connection to `runner_zmq_url` and check the broker."),
    Setting("curve_secret_key_file", _key_pair, None, "a .key_secret file",
            "This runner's CURVE key pair (`zmq-emitter keygen`), for a broker that admits only listed keys.",
            field="curve_key_pair"),
    Setting("redact", _flag, True, "true, false",
            "Replace secret-looking values in the `starting` status with `<redacted>`: in its env, and in the "
            "extra variables (`-e`) of its command line (docs/security.md)."),
    Setting("redact_names", split_commas, (), "comma-separated name parts",
            "More parts of variable names to redact (case-insensitive), besides the built-in list."),
    Setting("send_env", _flag, True, "true, false",
            "Include the env in the `starting` status at all."),
    Setting("ipc_mode", security.parse_ipc_mode, security.DEFAULT_IPC_MODE, "octal mode such as 600, or keep",
            "Permissions of ipc:// socket files the plugin binds (keep: as the umask made them).",
            shown=f"{security.DEFAULT_IPC_MODE:o}"),
)


SETTINGS_TABLE_HEADER = "| setting / environment variable | accepts | default | what it does |"


def settings_table() -> str:
    """SETTINGS as a Markdown table: the documentation site's (generated), README.md's (checked against it).

    >>> settings_table().splitlines()[2].split(" | ")[:3]
    ['| `runner_zmq_url` / `RUNNER_ZMQ_URL`', 'comma-separated tcp://HOST:PORT or ipc://PATH', '(none)']
    """
    rows = [f"| `{s.key}` / `{s.env}` | {s.accepts} | {s.shown_default} | {s.help} |" for s in SETTINGS]
    return "\n".join([SETTINGS_TABLE_HEADER, "|---|---|---|---|", *rows])


@dataclasses.dataclass(frozen=True)
class Config:
    """The resolved settings of one runner configuration."""

    url: tuple[str, ...] = ()
    bind: tuple[str, ...] = ()
    codec: str = "json"
    sndhwm: int = 1000
    linger: int = 1000
    buffer_messages: int = 100000
    buffer_bytes: int = 64 * 2**20
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    reconnect_wait: int = 5000
    heartbeat: int = 2000
    spool: str | None = DEFAULT_SPOOL  # spool_directory() resolves it
    spool_messages: int = 100000
    spool_bytes: int = 256 * 2**20
    curve_server_key: bytes = b""
    curve_key_pair: security.KeyPair | None = None  # read from the file runner_zmq_curve_secret_key_file names
    redact: bool = True
    redact_names: tuple[str, ...] = ()
    send_env: bool = True
    ipc_mode: int | None = security.DEFAULT_IPC_MODE

    def __post_init__(self):
        if self.curve_key_pair and not self.curve_server_key:
            raise ConfigError("zmq_emitter: runner_zmq_curve_secret_key_file needs runner_zmq_curve_server_key "
                              "(the broker's public key)")
        if self.curve_server_key and self.bind:
            raise ConfigError("zmq_emitter: CURVE (runner_zmq_curve_server_key) works with runner_zmq_url, "
                              "not runner_zmq_bind; see docs/security.md")

    @property
    def active(self) -> bool:
        return bool(self.url or self.bind)

    def transport(self) -> tuple:
        """What decides the socket: runs whose transport settings are equal share one socket."""
        return (self.url, self.bind, self.sndhwm, self.linger, self.buffer_messages, self.buffer_bytes,
                self.max_message_size, self.reconnect_wait, self.heartbeat, spool_directory(self.spool), self.spool_messages,
                self.spool_bytes, self.curve_server_key, self.curve_key_pair, self.ipc_mode)


def load(settings: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None) -> Config:
    """Resolve the settings file's ``runner_zmq_*`` keys, overridden by ``RUNNER_ZMQ_*`` variables.

    Raises ConfigError naming the setting, the value and what it accepts.
    """
    settings = settings or {}
    environ = os.environ if environ is None else environ
    values = {}
    for setting in SETTINGS:
        if setting.env in environ:
            raw, source = environ[setting.env], f"environment variable {setting.env}"
        elif setting.key in settings and settings[setting.key] is not None:
            raw, source = settings[setting.key], f"setting {setting.key} (env/settings)"
        else:
            values[setting.attribute] = setting.default
            continue
        try:
            values[setting.attribute] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"zmq_emitter: {source}: {exc}; accepted: {setting.accepts}") from None
    return Config(**values)
