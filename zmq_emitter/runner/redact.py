"""What the plugin removes from event content before publishing it: secrets.

Only the ``starting`` status carries the run's environment and command line; it is
published as a redacted copy (the dict ansible-runner hands to plugins is never modified)::

    >>> redact_status({"status": "starting", "env": {"DB_PASSWORD": "hunter2", "HOME": "/root"},
    ...                "command": ["ansible-playbook", "-e", "db_password=hunter2 user=me", "site.yml"]})
    {'status': 'starting', 'env': {'DB_PASSWORD': '<redacted>', 'HOME': '/root'}, \
'command': ['ansible-playbook', '-e', 'db_password=<redacted> user=me', 'site.yml']}

The list of name parts and what each setting does: docs/security.md.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping

REDACTED = "<redacted>"

# Environment variable names containing any of these (case-insensitive) have their
# value replaced by REDACTED in the `starting` status.  Deliberately broad: a
# redacted harmless value costs little, a leaked password a lot.  docs/security.md
# lists them too; runner_zmq_redact_names adds more.
SECRET_NAME_PARTS = ("PASSWORD", "PASSWD", "PASSPHRASE", "PASSWORT", "TOKEN", "SECRET", "KEY", "CREDENTIAL",
                     "PRIVATE", "AUTH", "COOKIE", "SESSION", "SIGNATURE", "SALT", "CERT", "DSN", "CONNECTION_STRING")

# user:password@ in URL-like values (proxies, database URLs) of any variable, e.g.
# HTTPS_PROXY=http://user:pw@proxy:3128 -> http://<redacted>@proxy:3128
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")


def secret_name_pattern(extra: Iterable[str] = ()) -> re.Pattern:
    """The regular expression a variable name is redacted for: any listed part, case-insensitive."""
    parts = list(SECRET_NAME_PARTS) + [p for p in extra if p]
    return re.compile("|".join(re.escape(p) for p in parts), re.IGNORECASE)


_DEFAULT_PATTERN = secret_name_pattern()


def redact_env(env: Mapping[str, Any], pattern: re.Pattern = _DEFAULT_PATTERN) -> dict:
    """A copy of ``env`` with secret-looking values replaced by REDACTED.

    >>> redact_env({"API_TOKEN": "abc", "HTTPS_PROXY": "http://me:pw@proxy:3128", "LANG": "C"})
    {'API_TOKEN': '<redacted>', 'HTTPS_PROXY': 'http://<redacted>@proxy:3128', 'LANG': 'C'}
    """
    redacted = {}
    for name, value in env.items():
        if pattern.search(str(name)):
            redacted[name] = REDACTED
        elif isinstance(value, str) and "@" in value:
            redacted[name] = _URL_CREDENTIALS.sub(rf"\g<scheme>{REDACTED}@", value)
        else:
            redacted[name] = value
    return redacted


# The command line: the options whose values are variables (ansible-playbook's and ansible's
# extra variables, ansible's module arguments).  argparse also accepts a long option's
# unambiguous abbreviation (--extra) and a short one with its value attached (-eVALUE),
# after flags that take no value (-ve VALUE).
_VALUE_OPTIONS = ("--extra-vars", "--args")
_SHORT_WITH_VALUE = re.compile(r"(?P<option>-[bCDJKkov]*[ea])(?P<value>.*)", re.DOTALL)
# A shell-like word of a key=value list, as ansible splits it: unquoted characters,
# backslash escapes, "double" and 'single' quoted parts.  Words are separated by spaces.
_WORD = r"""(?:[^\s"'\\]|\\.|"(?:[^"\\]|\\.)*"|'[^']*')+"""
_WORD_RE = re.compile(_WORD, re.DOTALL)
_WORDS_RE = re.compile(rf"\s*(?:{_WORD}(?:\s+|\Z))*", re.DOTALL)  # fullmatch: every quote closed


def _long_value_option(option: str) -> bool:
    return option not in ("--", "--a") and any(full.startswith(option) for full in _VALUE_OPTIONS)


def redact_command(command: Any, pattern: re.Pattern = _DEFAULT_PATTERN) -> Any:
    """A copy of ``command`` (the argument list of ``ansible-playbook``) with secret-looking variables redacted.

    In the values of ``-e``/``--extra-vars`` (and ``-a``/``--args``): ``key=value`` pairs whose
    key looks secret, and keys at any depth of an inline JSON document; an inline YAML
    document that names a secret is withheld whole; ``@file`` is left alone.  In every
    argument, ``scheme://user:password@`` loses its credentials.

    >>> redact_command(["ansible-playbook", "-e", 'db_password="hunter 2" user=me',
    ...                 '--extra-vars={"vault": {"token": "t0k"}}', "-e@vars.yml", "site.yml"])
    ['ansible-playbook', '-e', 'db_password=<redacted> user=me', \
'--extra-vars={"vault": {"token": "<redacted>"}}', '-e@vars.yml', 'site.yml']
    """
    if not isinstance(command, (list, tuple)):  # fail closed: not inspected, withheld if it may hold one
        return REDACTED if pattern.search(str(command)) else command
    redacted, value_next = [], False
    for arg in command:
        if not isinstance(arg, str):
            redacted.append(arg)
            value_next = False
            continue
        if "@" in arg:
            arg = _URL_CREDENTIALS.sub(rf"\g<scheme>{REDACTED}@", arg)
        if value_next:
            arg, value_next = redact_variables(arg, pattern), False
        elif arg.startswith("--"):
            option, equals, value = arg.partition("=")
            if _long_value_option(option):
                arg = option + equals + redact_variables(value, pattern) if equals else arg
                value_next = not equals
        elif match := _SHORT_WITH_VALUE.fullmatch(arg):
            value = match["value"]
            if value:  # -eVALUE; argparse also reads -e=VALUE as VALUE
                equals = "=" if value.startswith("=") else ""
                arg = match["option"] + equals + redact_variables(value[len(equals):], pattern)
            value_next = not value
        redacted.append(arg)
    return redacted


def redact_variables(value: str, pattern: re.Pattern = _DEFAULT_PATTERN) -> str:
    """One ``-e`` value with secret-looking variables redacted (see ``redact_command``).

    >>> redact_variables("api_token=abc region=eu")
    'api_token=<redacted> region=eu'
    >>> redact_variables('{"api_token": "abc", "region": "eu"}')
    '{"api_token": "<redacted>", "region": "eu"}'
    """
    text = value.strip()
    if text.startswith("@"):  # a file: its content is not on the command line
        return value
    if text.startswith(("{", "[")):  # what ansible reads as a YAML (or JSON) document
        try:
            document = json.loads(text)
        except ValueError:  # YAML flow style ({db_password: x}) is not parsed here: withhold it if it names one
            return REDACTED if pattern.search(text) else value
        redacted = _redact_keys(document, pattern)
        return value if redacted == document else json.dumps(redacted)
    if not _WORDS_RE.fullmatch(value):  # an unclosed quote: the words cannot be told apart
        return REDACTED if pattern.search(value) else value

    def word(match: re.Match) -> str:
        key, equals, _ = match.group().partition("=")
        return f"{key}={REDACTED}" if equals and pattern.search(key) else match.group()

    return _WORD_RE.sub(word, value)


def _redact_keys(value: Any, pattern: re.Pattern) -> Any:
    if isinstance(value, dict):
        return {key: REDACTED if pattern.search(str(key)) else _redact_keys(item, pattern)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_redact_keys(item, pattern) for item in value]
    return value


def redact_status(data: dict, *, redact: bool = True, send_env: bool = True,
                  pattern: re.Pattern = _DEFAULT_PATTERN) -> dict:
    """The status dict to publish: ``data`` itself if nothing changes, else a shallow copy.

    ansible-runner hands the same dict (and its ``env`` and ``command``, which go to the
    artifacts) to every plugin and to its own callbacks: it is never modified here.
    """
    touches_env = "env" in data and (redact or not send_env)
    if not touches_env and not ("command" in data and redact):
        return data
    copy = dict(data)
    if not send_env:
        copy.pop("env", None)
    if redact:
        if "env" in copy:
            env = copy["env"]
            # Fail closed: an env that is not a mapping is not inspected, it is withheld.
            copy["env"] = redact_env(env, pattern) if isinstance(env, Mapping) else REDACTED
        if "command" in copy:
            copy["command"] = redact_command(copy["command"], pattern)
    return copy
