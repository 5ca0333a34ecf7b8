"""The documentation site (mkdocs.yml) builds in strict mode, whole, offline; a broken link, anchor or API
reference fails the build, naming it."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zmq_emitter.runner.config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import dev  # noqa: E402  (dev.py docs --build: the command the suite runs is the one people run)


def _offline() -> list[str]:
    """A prefix that runs a command without a network (a network namespace of its own), where one can be made."""
    if os.geteuid() == 0 and shutil.which("unshare") and subprocess.run(["unshare", "--net", "true"]).returncode == 0:
        return ["unshare", "--net"]
    return []


OFFLINE = _offline()  # as root (CI), the builds below show that nothing is fetched at build time


def build(site: Path, config: Path = ROOT / "mkdocs.yml") -> subprocess.CompletedProcess:
    argv = OFFLINE + dev.docs_argv(["--build", str(site)]) + ["--config-file", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=config.parent,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = build(out)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_every_page_is_built(site):
    pages = {str(p.relative_to(site)) for p in site.rglob("index.html")}
    assert {"index.html", "protocol/index.html", "reliability/index.html", "operations/index.html",
            "security/index.html", "eda/index.html", "api/subscriber/index.html", "api/core/index.html",
            "benchmarks/RESULTS/index.html", "changelog/index.html"} <= pages
    assert (site / "benchmarks" / "results" / "hotpath.png").exists()  # the charts RESULTS.md shows


def test_the_home_page_is_the_readme_with_the_settings_table_from_config_py(site):
    home = (site / "index.html").read_text()
    assert "What this is" in home and 'href="operations/"' in home  # README's docs/operations.md link, rewritten
    for setting in SETTINGS:
        assert f"<code>{setting.key}</code>" in home and f"<code>{setting.env}</code>" in home


def test_the_api_reference_is_generated_from_the_docstrings(site):
    subscriber = (site / "api" / "subscriber" / "index.html").read_text()
    assert 'id="zmq_emitter.consumers.subscriber.Subscriber.replay"' in subscriber
    assert 'id="zmq_emitter.consumers.subscriber.AsyncSubscriber"' in subscriber
    core = (site / "api" / "core" / "index.html").read_text()
    assert 'id="zmq_emitter.consumers.core.Tracker"' in core
    assert "&gt;&gt;&gt;" in core and "<blockquote>" not in core  # doctest examples shown as code, not quotes


def test_search_indexes_every_page(site):
    index = json.loads((site / "search" / "search_index.json").read_text())
    locations = {doc["location"].split("#")[0] for doc in index["docs"]}
    assert {"", "protocol/", "api/subscriber/", "changelog/"} <= locations


def test_pages_load_nothing_from_elsewhere(site):
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert "fonts.googleapis.com" not in text and "fonts.gstatic.com" not in text, page
        assert not re.search(r'<(script|link|img)[^>]*(src|href)="(https?:)?//', text), page


@pytest.fixture
def copy(tmp_path) -> Path:
    """The site's sources in a scratch directory, to break."""
    target = tmp_path / "src"
    target.mkdir()
    for name in ("mkdocs.yml", "README.md", "CHANGELOG.md"):
        shutil.copy2(ROOT / name, target / name)
    shutil.copytree(ROOT / "docs", target / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    (target / "benchmarks").mkdir()
    shutil.copy2(ROOT / "benchmarks" / "RESULTS.md", target / "benchmarks" / "RESULTS.md")
    shutil.copytree(ROOT / "benchmarks" / "results", target / "benchmarks" / "results")
    (target / "zmq_emitter").symlink_to(ROOT / "zmq_emitter")
    return target


def test_the_unbroken_copy_builds(copy, tmp_path):  # so that what fails below fails for what it adds
    done = build(tmp_path / "site", copy / "mkdocs.yml")
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("page, addition, named", [
    ("docs/security.md", "See [the missing page](nowhere.md).", "nowhere.md"),
    ("docs/security.md", "See [the protocol's lost part](protocol.md#no-such-heading).", "no-such-heading"),
    ("docs/security.md", "See [above](#no-such-section).", "no-such-section"),
    ("README.md", "See [the missing guide](docs/missing-guide.md).", "missing-guide.md"),
    ("docs/api/core.md", "::: zmq_emitter.consumers.no_such_module", "no_such_module"),
    ("docs/api/core.md", "See [the tracker][zmq_emitter.consumers.core.NoSuchTracker].", "NoSuchTracker"),
], ids=["link", "anchor in another page", "anchor in the page", "link in the README", "API module",
        "API cross-reference"])
def test_a_broken_reference_fails_the_strict_build_naming_it(copy, tmp_path, page, addition, named):
    with open(copy / page, "a") as f:
        f.write(f"\n\n{addition}\n")
    done = build(tmp_path / "site", copy / "mkdocs.yml")
    assert done.returncode != 0
    assert named in done.stderr, done.stderr[-3000:]
