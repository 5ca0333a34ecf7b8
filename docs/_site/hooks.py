"""The documentation site's hooks (mkdocs.yml: ``hooks``) and a griffe extension for mkdocstrings.

- The home page is README.md: its links into ``docs/`` and to CHANGELOG.md made the site's, its settings table
  generated from ``zmq_emitter/runner/config.py`` (``settings_table``; tests/test_config.py checks
  that README.md's own copy is the same).
- CHANGELOG.md and benchmarks/RESULTS.md (with its charts) are pages too, read where they are.
- ``DocstringsAsMarkdown``: the docstrings' reStructuredText habits in Markdown: ``>>>`` examples
  shown as Python sessions (Markdown would take them for nested quotes), a literal block's ``::``
  shown as ``:`` (the indented block after it is code in Markdown too).

    python3 dev.py docs                  # serve on http://127.0.0.1:8000, rebuilt on every change
    python3 dev.py docs --build DIR      # the strict build the suite runs (tests/test_docs_site.py)
"""
from __future__ import annotations

import re
from pathlib import Path

import griffe
from mkdocs.structure.files import File

from zmq_emitter.runner.config import SETTINGS_TABLE_HEADER, settings_table


def on_files(files, config):
    root = Path(config.config_file_path).parent
    files.append(File.generated(config, "index.md", content=home_page((root / "README.md").read_text())))
    files.append(File.generated(config, "changelog.md", abs_src_path=str(root / "CHANGELOG.md")))
    files.append(File.generated(config, "benchmarks/RESULTS.md", abs_src_path=str(root / "benchmarks" / "RESULTS.md")))
    for chart in sorted((root / "benchmarks" / "results").glob("*.png")):
        files.append(File.generated(config, f"benchmarks/results/{chart.name}", abs_src_path=str(chart)))
    return files


# Where README.md's links point in the repository -> in the site (benchmarks/RESULTS.md keeps its path).
SITE_PATHS = {"docs/": "", "CHANGELOG.md": "changelog.md"}


def home_page(readme: str) -> str:
    """README.md as the site's home page: its links made the site's, the generated settings table."""
    for repository_path, site_path in SITE_PATHS.items():
        readme = readme.replace(f"]({repository_path}", f"]({site_path}")
    lines = readme.splitlines()
    try:
        start = lines.index(SETTINGS_TABLE_HEADER)
    except ValueError:
        raise ValueError(f"README.md has no settings table (no line {SETTINGS_TABLE_HEADER!r})") from None
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[:start] + settings_table().splitlines() + lines[end:]) + "\n"


_PROMPT = re.compile(r"^( {0,3})>>> ")


def fence_doctests(text: str) -> str:
    """``>>>`` blocks (prompt lines and their output, up to a blank line) inside ```pycon fences."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        match = _PROMPT.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent, block = match.group(1), []
        while i < len(lines) and lines[i].strip():
            block.append(lines[i])
            i += 1
        out += [f"{indent}```pycon", *block, f"{indent}```"]
    return "\n".join(out)


def as_markdown(docstring: str) -> str:
    return re.sub(r"(\S)::$", r"\1:", fence_doctests(docstring), flags=re.MULTILINE)


class DocstringsAsMarkdown(griffe.Extension):
    """mkdocstrings' griffe extension (mkdocs.yml): every docstring through ``as_markdown``, once."""

    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None and "```pycon" not in obj.docstring.value:
            obj.docstring.value = as_markdown(obj.docstring.value)
