"""The documentation holds together: the MkDocs site builds with no broken link, anchor or
page missing from the nav, and the README stays a short tour whose links all resolve."""

from __future__ import annotations

import re
import subprocess
import sys
import unicodedata
from pathlib import Path

from .conftest import ROOT

README = ROOT / "README.md"
README_MAX_LINES = 250
# [text](target) and ![alt](target); the target ends at whitespace or the closing bracket
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading (its default slugify)."""
    text = heading.replace("`", "").replace("*", "")   # code and emphasis marks
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(markdown: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", markdown.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M)}


def _relative_links(markdown: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", markdown.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in LINK.findall(text)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t, flags=re.I)]  # http:, mailto: ...


def test_mkdocs_site_builds_strict(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    assert mkdocs.exists(), f"{mkdocs} not found: `make setup` installs the dev extra"
    proc = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "architectures" / "index.html").is_file()


def test_readme_is_a_short_tour() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, \
        f"README.md has {len(lines)} lines; keep it under {README_MAX_LINES} (move detail to docs/)"


def test_readme_links_resolve() -> None:
    links = _relative_links(README)
    assert links, "README.md links nowhere: it should point into docs/"
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (ROOT / path).resolve() if path else README
        if not target.is_relative_to(ROOT) or not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no heading with anchor #{anchor} in {path or 'README.md'}")
    assert not broken, "README.md has broken links:\n" + "\n".join(broken)


def test_slug_matches_mkdocs_anchors() -> None:
    """The README check uses the anchors the site gets (the strict build checks the docs)."""
    assert _slug("Reproduction of the tutorials' results") == \
        "reproduction-of-the-tutorials-results"
    assert _slug("Beyond the tutorials") == "beyond-the-tutorials"
    assert _slug("`cnn_bn_aug`: **the** project's own") == "cnn_bn_aug-the-projects-own"


def test_code_page_lists_the_model_code() -> None:
    """docs/code.md says which modules retrain a model when edited: exactly MODEL_CODE,
    the list the checkpoint key and the train@ stage's dependencies follow."""
    from mnist_mlops.training.checkpoint import MODEL_CODE

    text = (ROOT / "docs" / "code.md").read_text(encoding="utf-8")
    section = text.split("## What retrains a model", 1)[1].split("\n## ", 1)[0]
    bullets = "\n".join(line for line in section.splitlines() if line.startswith(("- ", "  ")))
    listed = set(re.findall(r"`([a-z_]+/[a-z_]+\.py)`", bullets))
    assert listed == set(MODEL_CODE), \
        f"docs/code.md lists {sorted(listed)}; MODEL_CODE is {sorted(MODEL_CODE)}"


def test_code_page_names_every_module() -> None:
    """docs/code.md is where a newcomer finds a concern's home: every module is on it."""
    text = (ROOT / "docs" / "code.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([a-z_]+\.py)`", text))
    modules = {f.name for f in (ROOT / "src" / "mnist_mlops").rglob("*.py")
               if f.name != "__init__.py"}
    assert modules <= named, f"docs/code.md does not name {sorted(modules - named)}"
