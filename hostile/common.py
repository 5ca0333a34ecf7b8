"""Shared bits of the hostile scripts: run with  nice .venv/bin/python hostile/X.py  from the worktree."""
import sys, time, urllib.request, tempfile
import os; sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from conftest import BrokerProcess, RawPublisher, receive, wait_until  # noqa: E402,F401
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

def scrape(url):
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = s.value
    return out

def metrics_url(proc):
    import re
    return re.search(r"metrics at (\S+)", proc.start_line)[1]

def tmpdir():
    return tempfile.mkdtemp(prefix="hostile-")
