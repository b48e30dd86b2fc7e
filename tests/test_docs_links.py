"""Every relative link in README.md and docs/*.md leads somewhere: a file that exists, and for
`#anchor` a heading of that file as GitHub slugs it.

Links inside code (fenced blocks, `inline code`) are text, not links, and are not checked;
neither are `http(s):` and `mailto:` addresses (no network in the tests). Standard library
only: no Markdown parser, so the rules GitHub applies are written out in `github_slug`.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target), with an optional "title"; text may hold [brackets].
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) for each line outside fenced code blocks."""
    lines, fenced_by = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        fence = FENCE.match(line)
        if fence and fenced_by is None:
            fenced_by = fence.group(1)
        elif fence and line.strip().startswith(fenced_by):
            fenced_by = None
        elif fenced_by is None:
            lines.append((number, line))
    return lines


def link_targets(text: str) -> list[tuple[int, str]]:
    """(line number, target) of each link or image outside code, in order."""
    return [(number, target) for number, line in prose_lines(text)
            for target in LINK.findall(INLINE_CODE.sub("", line))]


def github_slug(heading: str) -> str:
    """A heading's anchor as GitHub renders it: the text without Markdown, lowercased, every
    character but letters, digits, `-`, `_` and spaces dropped, spaces -> `-`. Code and `*`
    marks drop out as punctuation; `_emphasis_` would keep its underscores (no heading uses it)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays
    kept = "".join(ch for ch in text.lower()
                   if ch in "-_ " or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of `page`; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        heading = HEADING.match(line)
        if not heading:
            continue
        slug = github_slug(heading.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    """'FILE:LINE: TARGET (why)' for each relative link of `page` that leads nowhere (FILE
    relative to `root`)."""
    problems = []
    for number, target in link_targets(page.read_text(encoding="utf-8")):
        if EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(root).as_posix()}:{number}: {target}"
        if not destination.exists():
            problems.append(f"{where} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            problems.append(f"{where} (no heading with anchor #{anchor})")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_every_relative_link_resolves(page: Path):
    assert broken_links(page) == [], (
        "expected every relative link to name an existing file and heading, got:\n"
        + "\n".join(broken_links(page)))


def test_every_docs_page_is_linked():
    """A page no link reaches is a page nobody finds: README.md or another page links each."""
    linked = set()
    for page in PAGES:
        for _, target in link_targets(page.read_text(encoding="utf-8")):
            path_part = target.partition("#")[0]
            if path_part and not EXTERNAL.match(target):
                linked.add((page.parent / path_part).resolve())
    orphans = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert orphans == [], f"expected a link to every docs page, none reaches {orphans}"


@pytest.mark.parametrize(("heading", "slug"), [
    ("Live dashboard: `flowctl ui`", "live-dashboard-flowctl-ui"),
    ("Tracking: wandb, MLflow, TensorBoard", "tracking-wandb-mlflow-tensorboard"),
    ("Several processes: torchrun", "several-processes-torchrun"),
    ("What `--resume auto` does", "what---resume-auto-does"),
    ("metrics.csv", "metricscsv"),
    ("Sampling and evaluation", "sampling-and-evaluation"),
    ("OT pairing off the critical path (`scripts/bench_ot.py`)",
     "ot-pairing-off-the-critical-path-scriptsbench_otpy"),
    ("The dashboard's API", "the-dashboards-api"),
    ("Your own [network](networks.md)", "your-own-network"),
])
def test_headings_slug_as_github_does(heading: str, slug: str):
    assert github_slug(heading) == slug


def test_a_broken_link_and_anchor_are_reported(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Two words\n\n[ok](#two-words) [gone](missing.md) "
                    "[bad](#three) `[code](nowhere.md)`\n\n```\n# not a heading\n"
                    "[fenced](nowhere.md)\n```\n## Two words\n[second](#two-words-1) "
                    "[third](#two-words-2) [comment](#not-a-heading) [self](page.md#title)\n",
                    encoding="utf-8")
    assert broken_links(page, root=tmp_path) == [
        "page.md:5: missing.md (no such file)",
        "page.md:5: #three (no heading with anchor #three)",
        "page.md:12: #two-words-2 (no heading with anchor #two-words-2)",
        "page.md:12: #not-a-heading (no heading with anchor #not-a-heading)"]
