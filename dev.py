#!/usr/bin/env python3
"""Set up the project's virtual environment (.venv) and run the demo or the test suite.

    python3 dev.py demo            # set everything up, then run the demo
    python3 dev.py test [ARGS]     # set everything up, then run the whole test suite (ARGS go to pytest)
    python3 dev.py bench [ARGS]    # set everything up, then run the benchmarks
    python3 dev.py docs            # serve the documentation site on http://127.0.0.1:8000 (--build DIR: build it)

Safe to run again: .venv is made once and reinstalled only when pyproject.toml changes.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"


def ensure_venv() -> None:
    if sys.version_info < (3, 10):
        sys.exit(f"dev.py: Python 3.10 or newer is needed, this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    stamp = VENV / ".installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
        subprocess.check_call(pip + ["--upgrade", "pip"])
        subprocess.check_call(pip + ["--editable", f"{ROOT}[test,eda,jetstream,web,docs]"])
        stamp.write_text(digest)


def ensure_node_example() -> None:
    """``npm ci`` in subscriber_examples/node (its lockfile pins zeromq v6, which ships prebuilt binaries),
    again only when the lockfile changes; its test runs the example against a real run.  Without npm the
    test says why it skips."""
    example = ROOT / "subscriber_examples" / "node"
    npm = shutil.which("npm")
    if npm is None:
        print("dev.py: npm not found: the Node.js example's test will be skipped", file=sys.stderr)
        return
    stamp = example / "node_modules" / ".installed"
    digest = hashlib.sha256((example / "package-lock.json").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        subprocess.check_call([npm, "ci", "--silent", "--no-audit", "--no-fund"], cwd=example)
        stamp.write_text(digest)


# What tests need from Debian: a check (a command on PATH, or a file) -> the package that provides it.
# Installed when missing and this is root; otherwise the tests that need them skip, saying why.
DEBIAN = {
    "cc": "gcc", "pkg-config": "pkg-config",  # the C subscriber example, built by its test
    "/usr/include/zmq.h": "libzmq3-dev", "/usr/include/cjson/cJSON.h": "libcjson-dev",
    "/usr/include/msgpack.h": "libmsgpack-dev",
    "ip": "iproute2",  # the network tests build hosts with `ip netns`
    "nats-server": "nats-server",  # the JetStream cluster tests/test_jetstream.py starts
    "chromium": "chromium", "chromedriver": "chromium-driver",  # the web view's browser tests (tests/test_web.py)
}


def ensure_debian_packages() -> None:
    missing = sorted({package for check, package in DEBIAN.items()
                      if not (Path(check).exists() if check.startswith("/") else shutil.which(check))})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"dev.py: not root or no apt-get: {' '.join(missing)} not installed; the tests that need them will "
              "say why they skip", file=sys.stderr)
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    quiet = {"stdout": subprocess.DEVNULL, "env": env}
    if subprocess.call(install, **quiet) != 0:  # package lists missing or stale: fetch them once, try again
        subprocess.call(["apt-get", "update", "-qq"], **quiet)
        if subprocess.call(install, **quiet) != 0:
            print(f"dev.py: apt-get could not install {' '.join(missing)}; the tests that need them will say why "
                  "they skip", file=sys.stderr)


def ensure_promtool() -> None:
    """``promtool`` in .venv/bin, for the test that checks docs/prometheus/alerts.yml with ``promtool check rules``.

    Taken out of Debian's ``prometheus`` package (``apt-get download``, ``dpkg-deb -x``) rather than installed:
    installing the package would also start a Prometheus server on this machine.  ``apt-get update`` first only
    if the download fails (and only as root).  Without apt, or offline, the test says why it skips."""
    target = VENV / "bin" / "promtool"
    if target.exists() or shutil.which("promtool") or shutil.which("apt-get") is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        download = ["apt-get", "download", "-q", "prometheus"]
        quiet = {"cwd": tmp, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        if subprocess.call(download, **quiet) != 0 and os.geteuid() == 0:
            subprocess.call(["apt-get", "update", "-q"], **quiet)
            subprocess.call(download, **quiet)
        debs = list(Path(tmp).glob("prometheus_*.deb"))
        if not debs or subprocess.call(["dpkg-deb", "-x", str(debs[0]), str(Path(tmp) / "root")], **quiet) != 0:
            print("dev.py: promtool could not be had (Debian's prometheus package): the alert rules' promtool "
                  "check will be skipped", file=sys.stderr)
            return
        shutil.copy2(Path(tmp) / "root" / "usr" / "bin" / "promtool", target)


def docs_argv(args: list[str]) -> list[str]:
    """``dev.py docs``: ``mkdocs serve`` (ARGS go to it); ``dev.py docs --build DIR``: the strict build into DIR,
    failing on any broken link, anchor or API reference (what tests/test_docs_site.py runs)."""
    mkdocs = [str(VENV / "bin" / "mkdocs")]
    if args[:1] == ["--build"]:
        if len(args) != 2:
            sys.exit("dev.py docs --build DIR: give the directory to build the site into")
        return mkdocs + ["build", "--strict", "--site-dir", str(Path(args[1]).resolve())]
    return mkdocs + ["serve", *args]


def main() -> None:
    command, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command not in ("demo", "test", "bench", "docs"):
        sys.exit(__doc__)
    ensure_venv()
    env = dict(os.environ, PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    if command == "demo":
        argv = [str(VENV / "bin" / "zmq-emitter"), "demo", *args]
    elif command == "test":
        ensure_node_example()
        ensure_debian_packages()
        ensure_promtool()
        argv = [str(PYTHON), "-m", "pytest", *args]
    elif command == "docs":
        argv = docs_argv(args)
        env["NO_MKDOCS_2_WARNING"] = "1"  # mkdocs-material's banner about its successor, on every build
    else:
        argv = [str(PYTHON), str(ROOT / "benchmarks" / "run.py"), *args]
    os.chdir(ROOT)
    os.execve(argv[0], argv, env)


if __name__ == "__main__":
    main()
