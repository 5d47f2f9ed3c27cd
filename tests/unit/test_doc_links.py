"""Every relative link in the README and docs/ (and deploy/README.md) names a file that exists, and an anchor that
one of its headings makes (GitHub's slugs)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "deploy" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    text = re.sub(r"[`*_]|\[|\]\([^)]*\)", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    problems = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            problems.append(f"{page.relative_to(root)}: {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{page.relative_to(root)}: {target}: no such heading")
    return problems


def test_every_relative_link_resolves() -> None:
    assert [problem for page in PAGES for problem in broken_links(page)] == []


def test_the_check_catches_a_missing_file_and_heading(tmp_path: Path) -> None:
    page = tmp_path / "a.md"
    page.write_text("# Top `x` (y)\n[ok](#top-x-y) [gone](b.md) [bad](#nowhere)\n")
    assert broken_links(page, tmp_path) == ["a.md: b.md: no such file", "a.md: #nowhere: no such heading"]
