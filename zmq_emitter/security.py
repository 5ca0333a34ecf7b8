"""Transport security: CURVE keys and sockets, the broker's ZAP authenticator, ipc permissions.

The other modules call these helpers at the few places where security happens; the
threat model and the step-by-step key set-up are in ``docs/security.md``.

Keys (the certificate format of ``zmq.auth``, also written by ``zmq-emitter keygen``)::

    >>> import tempfile
    >>> from zmq_emitter import security
    >>> keys = tempfile.mkdtemp()
    >>> public_file, secret_file = security.generate_keys(keys, "broker")
    >>> pair = security.load_key_pair(secret_file)          # public and secret key, z85
    >>> security.load_public_key(public_file) == pair.public
    True

CURVE on sockets (the ZeroMQ guide, chapter 5 "Ironhouse": every client authenticated
by its long-term public key, every connection encrypted)::

    security.curve_server(frontend, pair, domain="publishers")     # the broker's sockets
    security.curve_client(sub_socket, server_public_key, client_pair)  # plugin, tail, subscribers
    auth = security.Authenticator(context, {"publishers": "keys/publishers", "subscribers": None})

What the plugin removes from event content (secrets in the environment) is a runner-side
concern: ``zmq_emitter.runner.redact``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

log = logging.getLogger("zmq_emitter.security")

DEFAULT_IPC_MODE = 0o600


class SecurityError(ValueError):
    """A key, key file or key directory cannot be used; the message says which and why."""


# ----------------------------------------------------------------------------------------
# Keys


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, both keys z85-encoded (40 bytes each).  The secret never shows in repr."""

    public: bytes
    secret: bytes = dataclasses.field(repr=False)


def has_curve() -> bool:
    """True if this pyzmq/libzmq was built with CURVE (libsodium or tweetnacl)."""
    return bool(zmq.has("curve"))


def _require_curve() -> None:
    if not has_curve():
        raise SecurityError(f"this libzmq {zmq.zmq_version()} has no CURVE support; "
                            "install a pyzmq wheel (they bundle it) or build libzmq with libsodium")


def _check_z85_key(key: bytes, what: str) -> bytes:
    if len(key) != 40:
        raise SecurityError(f"{what} is not a CURVE key: expected 40 z85 characters, got {len(key)}")
    try:
        if len(z85.decode(key)) != 32:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise SecurityError(f"{what} is not a CURVE key: not valid z85 text") from None
    return key


def generate_keys(directory: str | os.PathLike, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``<name>.key`` (public) and ``<name>.key_secret`` (mode 0600) into ``directory``.

    The format is ``zmq.auth.create_certificates``'s.  Existing files are kept unless
    ``force``: overwriting a key pair silently would lock its owner out.
    """
    _require_curve()
    if not name or os.sep in name or name.startswith("."):
        raise SecurityError(f"key name {name!r}: use a plain file name such as 'broker' or 'runner-1'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = directory / f"{name}.key", directory / f"{name}.key_secret"
    existing = [f for f in (public_file, secret_file) if f.exists()]
    if existing and not force:
        raise SecurityError(f"{', '.join(map(str, existing))} exist already; choose another name or pass --force")
    for f in existing:
        f.unlink()
    # The umask makes the secret file owner-only from its creation on (no window in which
    # another user could open it); the chmod is for a umask we could not change.
    old_umask = os.umask(0o077)
    try:
        zmq.auth.create_certificates(str(directory), name)
    finally:
        os.umask(old_umask)
    os.chmod(secret_file, 0o600)
    os.chmod(public_file, 0o644)
    return public_file, secret_file


def load_key_pair(path: str | os.PathLike) -> KeyPair:
    """The key pair of a ``.key_secret`` file; SecurityError if it has no secret key."""
    _require_curve()
    try:
        public, secret = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise SecurityError(f"cannot read key file {os.fspath(path)!r}: {exc}") from None
    if not secret:
        raise SecurityError(f"{os.fspath(path)!r} holds no secret key; give the .key_secret file "
                            "(`zmq-emitter keygen` writes one)")
    _warn_if_readable_by_others(Path(path))
    return KeyPair(_check_z85_key(public, f"public key in {os.fspath(path)!r}"),
                   _check_z85_key(secret, f"secret key in {os.fspath(path)!r}"))


def load_public_key(value: str | bytes | os.PathLike) -> bytes:
    """A public key from 40 characters of z85 text, or from a ``.key``/``.key_secret`` file."""
    _require_curve()
    text = os.fspath(value)
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) == 40 and not os.path.exists(text):
        return _check_z85_key(raw, "the key text")
    try:
        public, _ = zmq.auth.load_certificate(text)
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{text!r} is neither a 40-character z85 public key nor a readable key file: {exc}") \
            from None
    return _check_z85_key(public, f"public key in {text!r}")


def _warn_if_readable_by_others(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("zmq_emitter: secret key file %s is readable by others (mode %o); chmod 600 it",
                    path, stat.S_IMODE(mode))


# ----------------------------------------------------------------------------------------
# CURVE on sockets


def curve_server(sock: zmq.Socket, pair: KeyPair, domain: str) -> None:
    """Make ``sock`` a CURVE server for every bind that follows; ZAP asks about ``domain``.

    A CURVE server socket refuses NULL (plain) and PLAIN peers at the handshake:
    one endpoint is never both encrypted and plain.
    """
    _require_curve()
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, pair.secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())


def curve_client(sock: zmq.Socket, server_key: bytes, pair: KeyPair | None = None) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is ``server_key``.

    Without ``pair`` the socket uses a fresh key pair: encrypted, but a broker that
    checks client keys refuses it.
    """
    _require_curve()
    if pair is None:
        public, secret = zmq.curve_keypair()
        pair = KeyPair(public, secret)
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, pair.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, pair.secret)


@dataclasses.dataclass(frozen=True)
class ClientCurve:
    """What a client needs: the server's public key and, to be authenticated, its own key pair.

    >>> ClientCurve.load(None, None) is None
    True
    """

    server_key: bytes
    pair: KeyPair | None = None

    @classmethod
    def load(cls, server_key: str | bytes | os.PathLike | None,
             secret_key_file: str | os.PathLike | None) -> "ClientCurve | None":
        if not server_key:
            if secret_key_file:
                raise SecurityError("a client key file was given without the server's public key "
                                    "(--curve-server-key / runner_zmq_curve_server_key)")
            return None
        return cls(load_public_key(server_key), load_key_pair(secret_key_file) if secret_key_file else None)

    def apply(self, sock: zmq.Socket) -> None:
        curve_client(sock, self.server_key, self.pair)


# ----------------------------------------------------------------------------------------
# The broker's ZAP handler


class KeyDirectory:
    """The public keys (``*.key`` files) in a directory, re-read whenever it changed.

    zmq.auth's ``configure_curve`` reads a directory once; this provider is asked for
    every new CURVE connection (``configure_curve_callback``) and compares the
    directory's listing (names, sizes, modification times) with the one it loaded, so
    a key removed or added counts from the next connection on.  Connections made
    before stay (CURVE has no re-authentication); restart the broker to cut them.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SecurityError(f"key directory {str(self.path)!r} does not exist or is not a directory")
        self._signature: tuple | None = None
        self._keys: frozenset[bytes] = frozenset()

    def _listing(self) -> tuple:
        entries = []
        with os.scandir(self.path) as it:
            for entry in it:
                if entry.name.endswith(".key") and entry.is_file():
                    st = entry.stat()
                    entries.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(sorted(entries))

    def keys(self) -> frozenset[bytes]:
        try:
            listing = self._listing()
        except OSError as exc:  # directory gone or unreadable: nobody gets in
            log.error("zmq_emitter: cannot read key directory %s: %s; refusing every key", self.path, exc)
            self._signature, self._keys = None, frozenset()
            return self._keys
        if listing != self._signature:
            keys = set()
            for name, *_ in listing:
                try:
                    public, _secret = zmq.auth.load_certificate(str(self.path / name))
                    keys.add(_check_z85_key(public, name))
                except (OSError, ValueError) as exc:
                    log.warning("zmq_emitter: ignoring key file %s: %s", self.path / name, exc)
            self._signature, self._keys = listing, frozenset(keys)
        return self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys()


class _AnyKey:
    def callback(self, domain: str, key: bytes) -> bool:
        return True


class Refusals:
    """Which refused keys to log now: each (side, key) at most once per ``interval`` seconds.

    A refused client (ZAP denial) may retry at once and for ever; one line a minute per key is
    enough to see who it is, and the count of the refusals not logged comes with the next line.

    >>> refusals = Refusals(interval=60)
    >>> refusals.note("publishers", b"KEY", now=0.0), refusals.note("publishers", b"KEY", now=1.0)
    (0, None)
    >>> refusals.note("publishers", b"KEY", now=61.0)  # said again, with the one not said
    1
    """

    def __init__(self, interval: float = 60.0, limit: int = 10_000):
        self.interval, self.limit = interval, limit
        self._said: dict[tuple[str, bytes], list] = {}  # (side, key) -> [when said, refusals not said since]

    def note(self, side: str, key: bytes, now: float) -> int | None:
        """None: do not log this refusal; otherwise log it, with the number of refusals not logged before it."""
        entry = self._said.get((side, key))
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return None
        if len(self._said) >= self.limit:  # a flood of distinct keys: keep only the recent ones
            self._said = {k: v for k, v in self._said.items() if now - v[0] < self.interval}
        self._said[(side, key)] = [now, 0]
        return entry[1] if entry is not None else 0


class _Logged:
    """A key provider whose refusals are logged (rate-limited by ``Refusals``)."""

    def __init__(self, provider: "KeyDirectory | _AnyKey", refusals: Refusals):
        self.provider, self.refusals = provider, refusals

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = self.provider.callback(domain, key)
        if not allowed:
            unsaid = self.refusals.note(domain, key, time.monotonic())
            if unsaid is not None:
                log.warning("refused a CURVE client on the %s side: its key %s is not in %s%s",
                            domain, key.decode(errors="replace"), getattr(self.provider, "path", "the key directory"),
                            f" ({unsaid} more refusals of this key since it was last logged)" if unsaid else
                            " (logged at most once a minute per key)")
        return allowed


class Authenticator:
    """The ZAP handler of one context: per ZAP domain, a key directory (or None: any CURVE key).

    Runs zmq.auth's ThreadAuthenticator (one Python thread, called only when a peer
    connects, never per message).  Start it before binding the CURVE server sockets.
    Refused keys are logged (``zmq_emitter.security``), at most once a minute per key and side.

        auth = Authenticator(ctx, {"publishers": "keys/publishers", "subscribers": "keys/subscribers"})
        ...
        auth.stop()
    """

    def __init__(self, context: zmq.Context, domains: Mapping[str, str | os.PathLike | None]):
        _require_curve()
        refusals = Refusals()
        self._providers = {domain: _Logged(KeyDirectory(path) if path else _AnyKey(), refusals)
                           for domain, path in domains.items()}
        self._auth = ThreadAuthenticator(context, log=logging.getLogger("zmq_emitter.security.zap"))
        self._auth.start()
        for domain, provider in self._providers.items():
            self._auth.configure_curve_callback(domain, provider)

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


# ----------------------------------------------------------------------------------------
# ipc:// socket files


def ipc_path(endpoint: str) -> str | None:
    """The file of a bound ipc:// endpoint, or None (not ipc, or Linux's abstract namespace ``ipc://@``)."""
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://"):]
    return None if not path or path.startswith("@") else path


def restrict_ipc(endpoint: str, mode: int | None = DEFAULT_IPC_MODE) -> None:
    """chmod the socket file of a just-bound ipc:// endpoint (``None``: leave it as the umask made it).

    Connecting to a Unix socket needs write permission on its file, so 0600 keeps other
    users out.  Between bind() and this chmod the file has the umask's permissions;
    docs/security.md explains why a private directory closes that window.
    """
    path = ipc_path(endpoint)
    if path is None or mode is None:
        return
    try:
        os.chmod(path, mode)
    except OSError as exc:
        raise SecurityError(f"cannot chmod {oct(mode)} the ipc socket {path!r}: {exc}") from None


def parse_ipc_mode(value: Any) -> int | None:
    """An octal mode such as 600 or 0660; ``keep`` leaves the umask's permissions."""
    text = str(value).strip().lower()
    if text in ("keep", "umask", "none"):
        return None
    if not re.fullmatch(r"0?o?[0-7]{3}", text):
        raise ValueError(f"{value!r} is not an octal mode like 600 or 0660")
    return int(text[-3:], 8)


# ----------------------------------------------------------------------------------------
# The broker's side


@dataclasses.dataclass(frozen=True)
class ServerCurve:
    """A broker's CURVE set-up: its key pair, and per side a key directory (None: any CURVE key).

    >>> # ServerCurve.load("keys/broker.key_secret", "keys/publishers", "keys/subscribers")
    """

    pair: KeyPair
    publisher_keys: Path | None = None
    subscriber_keys: Path | None = None

    PUBLISHERS = "publishers"   # ZAP domain of the frontend
    SUBSCRIBERS = "subscribers"  # ZAP domain of the backend

    @classmethod
    def load(cls, secret_key_file: str | os.PathLike, publisher_keys: str | os.PathLike | None = None,
             subscriber_keys: str | os.PathLike | None = None) -> "ServerCurve":
        for label, path in (("publisher", publisher_keys), ("subscriber", subscriber_keys)):
            if path is not None and not Path(path).is_dir():
                raise SecurityError(f"{label} key directory {os.fspath(path)!r} does not exist or is not a directory")
        return cls(load_key_pair(secret_key_file), Path(publisher_keys) if publisher_keys else None,
                   Path(subscriber_keys) if subscriber_keys else None)

    def start_authenticator(self, context: zmq.Context) -> Authenticator:
        return Authenticator(context, {self.PUBLISHERS: self.publisher_keys, self.SUBSCRIBERS: self.subscriber_keys})

    def apply(self, frontend: zmq.Socket | None, backend: zmq.Socket | None) -> None:
        """Make the frontend (publishers' side) and the backend (subscribers') CURVE servers."""
        if frontend is not None:
            curve_server(frontend, self.pair, self.PUBLISHERS)
        if backend is not None:
            curve_server(backend, self.pair, self.SUBSCRIBERS)
