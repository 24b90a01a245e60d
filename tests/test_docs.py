"""The documentation: `mkdocs build --strict` passes without a warning, every
page of the nav exists, and every relative link in `docs/` points at a file.

The build needs the `dev` extra (mkdocs, mkdocs-material, mkdocstrings) and
no network.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

FENCED_CODE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _nav_pages(nav):
    """The `.md` paths of a mkdocs nav, however nested."""
    if isinstance(nav, str):
        return [] if "://" in nav else [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in _nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    return []


def _config():
    yaml = pytest.importorskip("yaml")
    with open(ROOT / "mkdocs.yml") as f:
        return yaml.safe_load(f)


def _relative_links(page):
    """Link targets of a Markdown page, outside code, without the `#fragment`."""
    text = INLINE_CODE.sub("", FENCED_CODE.sub("", page.read_text()))
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            continue  # a URL, an anchor on the same page, or an absolute path
        yield target.split("#", 1)[0]


def test_mkdocs_build_strict_has_no_warnings(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module)
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    assert (tmp_path / "index.html").is_file()
    assert (tmp_path / "api" / "optimizers" / "index.html").is_file()


def test_nav_lists_every_page_and_every_page_exists():
    nav = _nav_pages(_config()["nav"])
    missing = [page for page in nav if not (DOCS / page).is_file()]
    assert not missing, f"pages in the nav of mkdocs.yml but not in docs/: {missing}"
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages == set(nav), f"pages in docs/ but not in the nav: {sorted(pages - set(nav))}"


def test_relative_links_point_at_files_that_exist():
    broken = []
    for page in sorted(DOCS.rglob("*.md")):
        for target in _relative_links(page):
            if target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "relative links to missing files:\n" + "\n".join(broken)


def test_link_checker_sees_links():
    # Guards the two tests above against a regex that matches nothing.
    links = list(_relative_links(DOCS / "index.md"))
    assert "algorithm.md" in links
    assert "api/index.md" in links
