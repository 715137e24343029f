"""The documentation holds together: every relative link in README.md and docs/*.md reaches a file
(and, into a Markdown file, one of its headings), and the numbers several pages share are stated
with one value: `make demo`'s time and peak memory (the README's first screen against the speed
page's table), the default folds and repetitions (reproduce.py's), and any test count (pytest's)."""
import re
from collections import Counter

import pytest

from conftest import REPO
import reproduce  # noqa: E402  (conftest puts the repository root on sys.path)

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


def flat(text):
    return " ".join(text.split())


def statements(page):
    """The page's prose as statements: each table row, and each sentence of the other paragraphs."""
    rows, sentences = [], []
    for paragraph in re.split(r"\n\s*\n", prose(page)):
        lines = paragraph.strip().splitlines()
        rows += [line for line in lines if line.startswith("|")]
        sentences += re.split(r"(?<=[.!?])\s+", flat(" ".join(line for line in lines if not line.startswith("|"))))
    return rows + sentences


DEMO_TIME = re.compile(r"`make demo` takes about (?P<total>\d+) minutes [^()]*\((?P<venv>[\d.]+) min for the venv, "
                       r"(?P<reproduction>[\d.]+) min for the reproduction, peak memory (?P<peak>[\d.]+) GiB\)")
MINUTES = re.compile(r"\b(\d+(?:\.\d+)?) min(?:utes?)?\b")
GIB = re.compile(r"\b(\d+(?:\.\d+)?) GiB\b")


def readme_demo_time():
    """The one current `make demo` time, in the README's first screen."""
    stated = DEMO_TIME.search(flat(prose(REPO / "README.md")))
    assert stated, "README.md no longer says '`make demo` takes about N minutes ... (V min for the venv, " \
                   "R min for the reproduction, peak memory M GiB)'"
    return stated


def demo_row():
    """speed-and-memory.md's table row of that measurement."""
    rows = [row for row in statements(REPO / "docs" / "speed-and-memory.md")
            if row.startswith("|") and "`make demo` in a fresh clone" in row]
    assert len(rows) == 1, f"docs/speed-and-memory.md has {len(rows)} table rows for `make demo` in a fresh clone, not 1"
    return rows[0]


def test_readme_answers_first():
    """Short, with the results table and the current `make demo` time on the first screen."""
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; details belong in docs/"
    results = next(number for number, line in enumerate(lines, 1) if line.startswith("| model |"))
    assert results <= 40, f"README.md's results table starts at line {results}"
    demo_time = next(number for number, line in enumerate(lines, 1) if "`make demo` takes about" in line)
    assert demo_time <= 30, f"README.md states make demo's time at line {demo_time}"


def test_readme_demo_time_adds_up():
    stated = readme_demo_time()
    total = float(stated["venv"]) + float(stated["reproduction"])
    assert abs(int(stated["total"]) - total) <= 1, f"{stated['total']} minutes is not {stated['venv']} + {stated['reproduction']}"


def test_speed_page_measured_the_readmes_demo_time():
    stated, row = readme_demo_time(), demo_row()
    for part in (f"venv {stated['venv']} min", f"reproduction {stated['reproduction']} min", f"{stated['peak']} GiB"):
        assert part in row, f"docs/speed-and-memory.md's `make demo` row lacks README.md's '{part}': {row}"
    assert abs(float(MINUTES.search(row)[1]) - int(stated["total"])) <= 0.5, row


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_page_gives_make_demo_the_same_time_and_memory(page):
    stated, row = readme_demo_time(), demo_row()
    minutes = {float(stated[k]) for k in ("total", "venv", "reproduction")} | {float(m) for m in MINUTES.findall(row)}
    for statement in statements(page):
        if "`make demo`" not in statement:
            continue
        other = {m for m in MINUTES.findall(statement) if float(m) not in minutes}
        assert not other, f"{page.name} gives `make demo` {sorted(other)} min, README.md {stated['total']}: {statement}"
        other = {m for m in GIB.findall(statement) if m != stated["peak"]}
        assert not other, f"{page.name} gives `make demo` {sorted(other)} GiB, README.md {stated['peak']}: {statement}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_fold_counts_are_reproduces_default(page):
    stated = {int(n) for n in re.findall(r"\b(\d+)(?:-fold\b| folds\b)", flat(prose(page)))}
    assert stated <= {reproduce.DEFAULT_FOLDS}, f"{page.name} states {sorted(stated)} folds; reproduce.py's default is {reproduce.DEFAULT_FOLDS}"


def test_readme_states_reproduces_default_design():
    designs = set(re.findall(r"\b(\d+) folds, (\d+) repetitions?\b", flat(prose(REPO / "README.md"))))
    assert designs == {(str(reproduce.DEFAULT_FOLDS), str(reproduce.DEFAULT_SEEDS[True]))}, designs


def test_test_counts_are_the_collected_count():
    stated = {int(n.replace(",", "")) for page in PAGES for n in re.findall(r"\b(\d[\d,]*) tests\b", prose(page))}
    if not stated:
        pytest.skip("no page states a test count")
    collected = CollectedCount()
    assert pytest.main(["--collect-only", "-qq", "-p", "no:cacheprovider", str(REPO / "tests")],
                       plugins=[collected]) == 0
    assert stated == {collected.count}, f"the docs state {sorted(stated)} tests; pytest collects {collected.count}"
