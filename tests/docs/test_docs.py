"""The README and the docs site stay whole: links resolve, every page is in the nav, code blocks import.

Offline and fast (no model is built; importing transformers/trl/peft is the slowest part). `make docs` builds the site
itself with `mkdocs build --strict`, which needs mkdocs-material; these checks do not.
"""

from __future__ import annotations

import ast
import importlib
import re
import unicodedata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MAX_README_LINES = 200

PAGES = sorted(DOCS.rglob("*.md"))
MARKDOWN = [README, *PAGES]

FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")

# Names that no longer exist in the new layout (issue 22); a page that still says them points users at nothing.
STALE = ("rose-hf demo", "rose_hf.synthetic", "rose_hf.demo", "rose-hf:synthetic", "rose-hf:tiny")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _without_code(text: str) -> str:
    """The text outside fenced blocks and inline code spans, where a `[x](y)` is a real link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slugify(heading: str) -> str:
    """Python-Markdown's `toc` slug, which mkdocs uses for heading anchors, applied to a heading's rendered text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").replace("**", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    """Heading anchors of a markdown file; repeated headings get `_1`, `_2`, ... as Python-Markdown numbers them."""
    seen: set[str] = set()
    for match in HEADING.finditer(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = base = slugify(match.group(2))
        number = 0
        while slug in seen:
            number += 1
            slug = f"{base}_{number}"
        seen.add(slug)
    return seen


def _links():
    for path in MARKDOWN:
        for target in LINK.findall(_without_code(path.read_text(encoding="utf-8"))):
            if not SCHEME.match(target):
                yield pytest.param(path, target, id=f"{_rel(path)}->{target}")


@pytest.mark.parametrize(("page", "target"), list(_links()))
def test_relative_link_resolves(page: Path, target: str):
    file_part, _, anchor = target.partition("#")
    destination = (page.parent / file_part).resolve() if file_part else page
    assert destination.exists(), f"{_rel(page)}: link to {target!r}, but {file_part!r} does not exist"
    if anchor:
        assert destination.suffix == ".md", f"{_rel(page)}: anchor {anchor!r} into a non-markdown file {target!r}"
        found = anchors(destination)
        assert anchor in found, f"{_rel(page)}: no heading {anchor!r} in {_rel(destination)} (it has {sorted(found)})"


def test_slugify_follows_mkdocs():
    assert slugify("The whole method: `RoseTrainer`") == "the-whole-method-rosetrainer"
    assert slugify("Can you trust a selection?") == "can-you-trust-a-selection"
    assert slugify("Bad rows don't stop a run") == "bad-rows-dont-stop-a-run"
    assert slugify("On a real model: SmolLM2-135M-Instruct (`make bench-real`)") == (
        "on-a-real-model-smollm2-135m-instruct-make-bench-real"
    )


def _nav_files(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [name for item in node for name in _nav_files(item)]
    if isinstance(node, dict):
        return [name for value in node.values() for name in _nav_files(value)]
    return []


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config.get("docs_dir", "docs") == "docs"
    nav = [name for name in _nav_files(config["nav"]) if not SCHEME.match(name)]
    assert len(nav) == len(set(nav)), f"pages listed twice in mkdocs.yml's nav: {sorted(nav)}"
    missing = [name for name in nav if not (DOCS / name).is_file()]
    assert not missing, f"mkdocs.yml's nav lists pages that do not exist in docs/: {missing}"
    pages = {page.relative_to(DOCS).as_posix() for page in PAGES}
    unlisted = sorted(pages - set(nav))
    assert not unlisted, f"pages in docs/ missing from mkdocs.yml's nav: {unlisted}"


def _python_blocks():
    for path in MARKDOWN:
        text = path.read_text(encoding="utf-8")
        for match in PYTHON_BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 2  # the block's first code line
            yield pytest.param(match.group(1), id=f"{_rel(path)}:{line}")


def _imports(code: str) -> list[tuple[str, str | None]]:
    """(module, name) for every import of a code block; name None for `import module`."""
    if code.lstrip().startswith(">>>"):  # a doctest-style block: its statements, without prompts and outputs
        code = "\n".join(line[4:] for line in code.splitlines() if line.startswith((">>> ", "... ")))
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import in a docs code block cannot be run by a reader"
            found += [(node.module, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("code", list(_python_blocks()))
def test_python_block_imports_resolve(code: str):
    imports = _imports(code)
    for module_name, name in imports:
        module = importlib.import_module(module_name)
        if name is None or name == "*" or hasattr(module, name):
            continue
        try:
            importlib.import_module(f"{module_name}.{name}")
        except ModuleNotFoundError:
            pytest.fail(f"`from {module_name} import {name}`: {module_name} has no attribute or submodule {name!r}")


def test_the_python_blocks_are_found():
    # Guards the regular expressions above: the README alone has the callback and RoseTrainer blocks.
    readme_blocks = [block for block in _python_blocks() if block.id.startswith("README.md:")]
    assert len(readme_blocks) >= 2
    assert any(_imports(block.values[0]) for block in readme_blocks)


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move the detail into docs/ (STYLE.md item 19)"


@pytest.mark.parametrize("path", MARKDOWN, ids=_rel)
def test_no_stale_names(path: Path):
    text = path.read_text(encoding="utf-8")
    stale = [name for name in STALE if name in text]
    assert not stale, f"{_rel(path)} still names {stale}, which the new layout removed"
