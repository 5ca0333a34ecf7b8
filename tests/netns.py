"""A test network of hosts: Linux network namespaces on one bridge, real processes in them.

    with Network() as net:                       # needs root and iproute2's `ip` (see ``unavailable``)
        broker = net.host("broker")              # a namespace, cabled to the switch: 10.77.0.x/24
        runner = net.host("runner")
        proc = broker.start(["zmq-emitter", "broker", "--frontend", f"tcp://{broker.address}:5557", ...])
        runner.run(["ansible-runner", "run", ...])   # waits, like subprocess.run
        net.cut(broker)                          # the broker's cable pulled: its link down at the switch
        net.restore(broker)
    # every process started here killed, every namespace gone: also on an exception or Ctrl-C

Layout: one namespace per host, plus one for the switch (a Linux bridge), so that nothing of the
test network is in the machine's own namespace: the private addresses (``SUBNET``) exist only
inside these namespaces, and each host's loopback is up (ipc:// and 127.0.0.1 work in it as
anywhere).  Each host is cabled with a veth pair created directly with one end in the switch and
the other in the host.

Namespaces are named ``zmqnet<pid>-<host>``: a run knows its own, and ``clean_stale`` removes
those of an earlier run whose process is gone (a run killed outright cannot tear down), killing
what still runs in them first (a namespace lives on while a process is in it).  Teardown is
registered with ``atexit`` too, for an interpreter ending on Ctrl-C before the fixture's own.

Processes run as ``ip netns exec NAME command...``: ``ip`` replaces itself with the command, so
the ``Popen`` is the command's own process (its pid, its signals).
"""
from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

PREFIX = "zmqnet"
SUBNET = ipaddress.ip_network("10.77.0.0/24")
_BIN = Path(sys.executable).parent


def unavailable() -> str | None:
    """Why network namespaces cannot be made here (for a skip), or None if they can."""
    if shutil.which("ip") is None:
        return "network namespaces: iproute2's `ip` is not installed (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces: `ip netns add` needs root (run the tests as root)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"network namespaces: `ip netns add` failed: {made.stderr.strip() or made.returncode}"
    _ip("netns", "del", probe, check=False)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]


def _remove_namespace(name: str) -> None:
    """Kill what runs in namespace ``name`` (only processes inside it), then delete it."""
    for pid in _ip("netns", "pids", name, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _ip("netns", "del", name, check=False)


def clean_stale() -> list[str]:
    """Remove the namespaces left by earlier runs whose process is gone; their names."""
    removed = []
    for name in _namespaces():
        owner = name[len(PREFIX):].split("-", 1)[0]
        if not name.startswith(PREFIX) or not owner.isdigit() or int(owner) == os.getpid():
            continue
        try:
            os.kill(int(owner), 0)
            continue  # that run is still going (another test session): not ours to touch
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _remove_namespace(name)
        removed.append(name)
    return removed


class Host:
    """One host of the network: a namespace with one interface (``eth0``) at ``address``."""

    def __init__(self, network: "Network", name: str, address: str):
        self.network, self.name, self.address = network, name, address
        self.namespace = f"{PREFIX}{os.getpid()}-{name}"

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` as run inside this host; a bare name is taken from the project's venv if it is there."""
        program = argv[0]
        if os.sep not in program and (_BIN / program).exists():
            program = str(_BIN / program)
        return ["ip", "netns", "exec", self.namespace, program, *argv[1:]]

    def start(self, argv: list[str], **popen) -> subprocess.Popen:
        """Start ``argv`` inside this host (``subprocess.Popen`` options apply); killed at teardown."""
        proc = subprocess.Popen(self.command(argv), **popen)
        self.network.processes.append(proc)
        return proc

    def run(self, argv: list[str], timeout: float = 120, **options) -> subprocess.CompletedProcess:
        """Run ``argv`` inside this host to its end (``subprocess.run`` options apply)."""
        options.setdefault("capture_output", True)
        options.setdefault("text", True)
        return subprocess.run(self.command(argv), timeout=timeout, **options)

    def connections(self, port: int) -> int:
        """How many TCP connections to this host's ``port`` are established (its own /proc/net/tcp)."""
        table = self.run(["cat", "/proc/net/tcp", "/proc/net/tcp6"]).stdout.splitlines()
        # sl local_address rem_address st ...: local port in hex after the colon, st 01 = ESTABLISHED
        return sum(1 for line in table if len(line.split()) > 3 and line.split()[3] == "01"
                   and line.split()[1].rsplit(":", 1)[-1] == f"{port:04X}")

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.address})"


class Network:
    """Hosts on one switch; ``cut``/``restore`` a host's cable; ``close`` undoes everything."""

    def __init__(self):
        clean_stale()
        self.hosts: dict[str, Host] = {}
        self.processes: list[subprocess.Popen] = []
        self._addresses = SUBNET.hosts()
        next(self._addresses)  # .1 stays free (a gateway, should a test want one)
        self.switch = f"{PREFIX}{os.getpid()}-switch"
        self._made: list[str] = []
        atexit.register(self.close)
        self._add_namespace(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def host(self, name: str) -> Host:
        """A new host cabled to the switch, with the next free address of ``SUBNET``."""
        if name in self.hosts or not name.isidentifier() or len(name) > 10:
            raise ValueError(f"host name {name!r}: a new identifier of at most 10 characters")
        host = Host(self, name, str(next(self._addresses)))
        self._add_namespace(host.namespace)
        port = f"p-{name}"  # the switch's end of the cable
        _ip("link", "add", port, "netns", self.switch, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        _ip("-n", host.namespace, "addr", "add", f"{host.address}/{SUBNET.prefixlen}", "dev", "eth0")
        _ip("-n", host.namespace, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def cut(self, host: Host) -> None:
        """Pull ``host``'s cable at the switch: nothing reaches it or leaves it; its connections
        are neither closed nor reset (its peers find out only by their own timeouts)."""
        _ip("-n", self.switch, "link", "set", f"p-{host.name}", "down")

    def restore(self, host: Host) -> None:
        """Plug ``host``'s cable back in."""
        _ip("-n", self.switch, "link", "set", f"p-{host.name}", "up")

    def close(self) -> None:
        """Kill every process started here, delete every namespace made here.  Safe to call again."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        self.processes.clear()
        for name in reversed(self._made):
            _remove_namespace(name)
        self._made.clear()
        atexit.unregister(self.close)

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
