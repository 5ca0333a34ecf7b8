"""``zmq-emitter --help`` and every subcommand's read well in an 80-column terminal."""
from __future__ import annotations

import os
import re
import subprocess

import click
import pytest
import typer.main
from conftest import BIN

import zmq_emitter
from zmq_emitter import cli


def command_paths(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The command itself and every subcommand under it, as argument lists."""
    paths = [path]
    for name, sub in getattr(command, "commands", {}).items():
        paths += command_paths(sub, path + (name,))
    return paths


COMMANDS = command_paths(typer.main.get_command(cli.app))


def help_at_80_columns(*path: str) -> str:
    env = dict(os.environ, COLUMNS="80", TERM="xterm-256color")
    done = subprocess.run([str(BIN / "zmq-emitter"), *path, "--help"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_subcommand_is_checked():
    assert {" ".join(path) for path in COMMANDS} >= {"", "broker", "tail", "keygen", "runs", "spool", "demo",
                                                     "eda", "eda install", "eda sources"}


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "zmq-emitter")
def test_help_at_80_columns_cuts_nothing_and_shows_no_placeholder(path):
    text = help_at_80_columns(*path)
    for line in text.splitlines():
        assert len(line) <= 80, line
        assert "…" not in line, f"cut: {line!r}"
        # click shortens a command's one-line summary with "..." (only "[ARGS]..." of the usage line is meant)
        assert not re.search(r"[^\]]\.\.\.$", line), f"cut: {line!r}"
        assert "{" not in line and "<bool>" not in line, f"placeholder: {line!r}"
        assert not re.search(r"<[a-z][a-z \[\]|]*>", line), f"type placeholder: {line!r}"


def test_option_names_and_default_endpoints_show_whole():
    broker_help = help_at_80_columns("broker")
    assert "--curve-secret-key-file FILE" in broker_help and "--jetstream-duplicate-window" in broker_help
    assert "tcp://127.0.0.1:5557" in broker_help and "tcp://127.0.0.1:5559" in broker_help
    assert "tcp://127.0.0.1:5558" in help_at_80_columns("tail")


def test_version_prints_the_packages_version():
    done = subprocess.run([str(BIN / "zmq-emitter"), "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"zmq-emitter {zmq_emitter.__version__}\n")
