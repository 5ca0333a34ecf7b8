"""What the plugin removes from event content before publishing it: secrets.

Only the ``starting`` status carries the run's environment; it is published as a redacted
copy (the dict ansible-runner hands to plugins is never modified)::

    >>> redact_status({"status": "starting", "env": {"DB_PASSWORD": "hunter2", "HOME": "/root"}})
    {'status': 'starting', 'env': {'DB_PASSWORD': '<redacted>', 'HOME': '/root'}}

The list of name parts and what each setting does: docs/security.md.
"""
from __future__ import annotations

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


def redact_status(data: dict, *, redact: bool = True, send_env: bool = True,
                  pattern: re.Pattern = _DEFAULT_PATTERN) -> dict:
    """The status dict to publish: ``data`` itself if nothing changes, else a shallow copy.

    ansible-runner hands the same dict (and its ``env``, which is the environment of the
    run and goes to the artifacts) to every plugin and to its own callbacks: it is
    never modified here.
    """
    if "env" not in data:
        return data
    if not send_env:
        return {k: v for k, v in data.items() if k != "env"}
    if not redact:
        return data
    env, copy = data["env"], dict(data)
    # Fail closed: an env that is not a mapping is not inspected, it is withheld.
    copy["env"] = redact_env(env, pattern) if isinstance(env, Mapping) else REDACTED
    return copy
