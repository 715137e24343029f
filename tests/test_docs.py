"""The documentation holds together: every relative link in README.md and docs/*.md reaches a file
(and, into a Markdown file, one of its headings), and a test count the README states is the count
pytest collects."""
import re
from collections import Counter

import pytest

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.M)


def prose(path):
    """The page without its code blocks, where a '# comment' is no heading and '](' no link."""
    return FENCE.sub("", path.read_text())


def anchor(heading):
    """GitHub's anchor of a heading: lowercase, punctuation dropped (hyphens and underscores kept),
    spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    seen, result = Counter(), set()
    for heading in HEADING.findall(prose(path)):
        name = anchor(heading)
        result.add(name if not seen[name] else f"{name}-{seen[name]}")
        seen[name] += 1
    return result


def relative_links(path):
    text = INLINE_CODE.sub("", prose(path))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_anchor_follows_githubs_rule():
    assert anchor("Many runs: `reproduce.py --jobs` and `--print-commands`") == \
        "many-runs-reproducepy---jobs-and---print-commands"
    assert anchor("Does the faster code give the same results?") == "does-the-faster-code-give-the-same-results"


def test_readme_links_every_docs_page():
    linked = {target.partition("#")[0] for target in relative_links(REPO / "README.md")}
    assert {f"docs/{page.name}" for page in PAGES[1:]} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        file_part, _, fragment = target.partition("#")
        file = (page.parent / file_part).resolve() if file_part else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{target}: no heading with that anchor in {file.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


class CollectedCount:
    def pytest_collection_finish(self, session):
        self.count = len(session.items)


def test_readme_test_count_is_the_collected_count():
    stated = {int(n.replace(",", "")) for n in re.findall(r"\b(\d[\d,]*) tests\b", prose(REPO / "README.md"))}
    if not stated:
        pytest.skip("README.md states no test count")
    collected = CollectedCount()
    assert pytest.main(["--collect-only", "-qq", "-p", "no:cacheprovider", str(REPO / "tests")],
                       plugins=[collected]) == 0
    assert stated == {collected.count}, f"README.md states {sorted(stated)} tests; pytest collects {collected.count}"
