"""The documentation stays in step with the code.

- every environment variable ``settings.py`` reads is documented in ``docs/CONFIGURATION.md``
  and listed (commented out) in ``.env.example``, and no documented one is unknown to the code;
- the README stays short and keeps its sections in the fixed order;
- every relative link (and image) of the README and ``docs/*.md`` points to an existing file,
  and every ``#anchor`` into a Markdown file to one of its headings;
- ``LICENSE`` is the Apache License 2.0.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ROOT / "marketflow_assets" / "settings.py"
CONFIGURATION = ROOT / "docs" / "CONFIGURATION.md"
ENV_EXAMPLE = ROOT / ".env.example"
README = ROOT / "README.md"
LICENSE = ROOT / "LICENSE"

VARIABLE = re.compile(r"^(MARKETFLOW|COINGECKO)_[A-Z0-9_]+$")
README_MAX_LINES = 250
#: The README's second-level sections, exactly in this order (after the title and a short intro).
README_SECTIONS = [
    "Screenshots",
    "Quick start",
    "Features",
    "Architecture",
    "CLI commands",
    "Settings",
    "Documentation",
]
CLI_COMMANDS = [
    "up",
    "ingest",
    "refresh",
    "forecast",
    "dashboard",
    "compact",
    "follow",
    "stream",
    "spark-cluster",
    "live",
]
#: Python sources where a variable documented in CONFIGURATION.md must appear (tests and
#: benchmarks read a few of their own).
CODE_DIRS = ["marketflow_assets", "spark_streaming", "benchmarks", "marketflow_assets_tests"]


def settings_variables() -> set[str]:
    """Every string literal of settings.py that names a variable (``MARKETFLOW_*``,
    ``COINGECKO_*``), wherever it sits: ``get("...")`` calls, ``ENV_*`` constants, dict keys. A
    prefix such as ``"MARKETFLOW_"`` (ending in ``_``) is not a variable."""
    tree = ast.parse(SETTINGS.read_text(encoding="utf-8"))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and VARIABLE.match(node.value)
        and not node.value.endswith("_")
    }


def mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![A-Z0-9_]){re.escape(name)}(?![A-Z0-9_])", text) is not None


def test_settings_variables_are_found():
    names = settings_variables()
    assert "MARKETFLOW_POSTGRES_URL" in names
    assert {"COINGECKO_API_KEY", "MARKETFLOW_KAFKA_BOOTSTRAP", "MARKETFLOW_DATA_DIR"} <= names
    assert len(names) >= 20, sorted(names)


def test_every_setting_is_in_configuration_md():
    rows = CONFIGURATION.read_text(encoding="utf-8")
    # a table row of its own: "| `NAME` | meaning | default |"
    missing = sorted(
        name
        for name in settings_variables()
        if not re.search(rf"^\|\s*`{re.escape(name)}`\s*\|", rows, flags=re.MULTILINE)
    )
    assert not missing, f"variables read by settings.py but not in docs/CONFIGURATION.md: {missing}"


def test_every_setting_is_in_env_example_commented_out():
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    listed = {
        m.group(1) for line in lines if (m := re.match(r"^#\s*([A-Z][A-Z0-9_]*)=", line.strip()))
    }
    missing = sorted(settings_variables() - listed)
    assert not missing, f"variables read by settings.py but not in .env.example: {missing}"
    active = [line for line in lines if re.match(r"^\s*[A-Za-z_][A-Za-z0-9_]*\s*=", line)]
    assert not active, f".env.example sets variables instead of listing them: {active}"


def test_configuration_md_documents_no_unknown_variable():
    documented = set(
        re.findall(
            r"^\|\s*`((?:MARKETFLOW|COINGECKO)_[A-Z0-9_]+)`",
            CONFIGURATION.read_text(encoding="utf-8"),
            flags=re.MULTILINE,
        )
    )
    assert documented, "docs/CONFIGURATION.md has no variable table"
    code = "\n".join(
        path.read_text(encoding="utf-8")
        for folder in CODE_DIRS
        for path in (ROOT / folder).rglob("*.py")
        if path.resolve() != Path(__file__).resolve()
    )
    unknown = sorted(name for name in documented if not mentions(code, name))
    assert not unknown, f"documented in docs/CONFIGURATION.md but read nowhere: {unknown}"


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)


def _sections(text: str) -> dict[str, str]:
    """Second-level heading → its body."""
    parts = re.split(r"^## +(.+?)\s*$", _without_code_blocks(text), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_readme_sections_in_order():
    text = README.read_text(encoding="utf-8")
    assert text.startswith("# "), "README.md starts with its title"
    intro = _without_code_blocks(text).split("\n## ", 1)[0].splitlines()[1:]
    assert any(line.strip() for line in intro), "README.md says what it is before its sections"
    sections = _sections(text)
    assert list(sections) == README_SECTIONS
    assert "![Dashboard](docs/images/dashboard.png)" in sections["Screenshots"]
    assert "![Dagster asset graph](docs/images/asset_graph.png)" in sections["Screenshots"]
    assert "python docs/make_screenshots.py" in sections["Screenshots"]
    quick = sections["Quick start"]
    for needle in ("make run", "make test", "127.0.0.1:3000", "127.0.0.1:8501", "Ctrl-C"):
        assert needle in quick, f"Quick start does not mention {needle!r}"
    cli = sections["CLI commands"]
    for command in CLI_COMMANDS:
        assert f"marketflow {command}" in cli, f"CLI commands does not list {command!r}"
    assert "--version" in cli and "--debug" in cli
    assert "docs/CONFIGURATION.md" in sections["Settings"]


def _markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def _links(text: str) -> list[str]:
    text = _without_code_blocks(text)
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    inline = re.findall(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    reference = re.findall(r"^\s*\[[^\]\n]+\]:\s*<?(\S+?)>?\s*$", text, flags=re.MULTILINE)
    return inline + reference


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    headings = re.findall(
        r"^#{1,6} +(.+?)\s*#*\s*$", _without_code_blocks(path.read_text(encoding="utf-8")), re.M
    )
    slugs: set[str] = set()
    for heading in headings:
        slug, n = _slug(heading), 1
        while slug in slugs:  # GitHub numbers repeated headings: slug-1, slug-2, ...
            slug = f"{_slug(heading)}-{n}"
            n += 1
        slugs.add(slug)
    return slugs


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path):
    broken = []
    for target in _links(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE):  # http:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links {broken}"


def test_links_are_found():
    """Not vacuous: the README links the images and the docs it must."""
    links = _links(README.read_text(encoding="utf-8"))
    assert "docs/images/dashboard.png" in links
    assert "docs/CONFIGURATION.md" in links
    assert len(links) >= 10


def test_license_is_apache_2():
    text = LICENSE.read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "Licensed under the Apache License 2.0" in README.read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# docs/ARCHITECTURE.md "Code layout" names exactly the modules of the tree
# ------------------------------------------------------------------------------------------------
PACKAGES = ("marketflow_assets", "spark_streaming")


def layout_modules(text: str) -> set[str]:
    """Module paths (``marketflow_assets/ingest/spool.py``) named in the code-layout block: a
    line ``<indent><dir>/  a.py  b.py  comment`` opens ``dir`` under the directory of the last
    line with less indentation; a line of only ``*.py`` names continues the one above."""
    block = text.split("## Code layout", 1)[1].split("```", 2)[1]
    named: set[str] = set()
    stack: list[tuple[int, str]] = []  # (indent, directory path)
    current = ""
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        words = line.split()
        if words[0].endswith("/"):
            while stack and stack[-1][0] >= indent:
                stack.pop()
            parent = stack[-1][1] if stack else ""
            current = f"{parent}{words[0]}"
            stack.append((indent, current))
            words = words[1:]
        else:  # files: of the innermost directory opened with less indentation
            while stack and stack[-1][0] >= indent:
                stack.pop()
            current = stack[-1][1] if stack else ""
        for word in words:
            if not word.endswith(".py"):
                break  # the comment starts
            named.add(f"{current}{word}")
    return {m for m in named if m.startswith(PACKAGES)}


def tree_modules() -> set[str]:
    return {
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if not path.name.startswith("__") and "__pycache__" not in path.parts
    }


def test_architecture_code_layout_names_every_module_and_no_other():
    named = layout_modules((ROOT / "docs" / "ARCHITECTURE.md").read_text())
    tree = tree_modules()
    assert len(tree) > 80
    assert not named - tree, f"docs/ARCHITECTURE.md names modules that do not exist: {named - tree}"
    assert not tree - named, f"docs/ARCHITECTURE.md misses modules: {tree - named}"


def test_layout_parser_reads_nesting_and_continuations():
    text = "\n".join(
        [
            "## Code layout",
            "```",
            "marketflow_assets/",
            "  a.py  b.py   words here",
            "  x/  c.py",
            "    y/  d.py",
            "        e.py",
            "  z/  f.py",
            "  h.py",
            "spark_streaming/  g.py",
            "```",
        ]
    )
    assert layout_modules(text) == {
        "marketflow_assets/a.py",
        "marketflow_assets/b.py",
        "marketflow_assets/x/c.py",
        "marketflow_assets/x/y/d.py",
        "marketflow_assets/x/y/e.py",
        "marketflow_assets/z/f.py",
        "marketflow_assets/h.py",
        "spark_streaming/g.py",
    }
