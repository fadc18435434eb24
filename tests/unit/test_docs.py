"""The README and docs/: the README stays short, every link and anchor resolves, every
`make` target and `zspa-serve` command line in a code block works, the flags and metrics
tables of docs/operations.md name exactly what zspa-serve has, and every page is linked
from the README. Fast: no engine, no server."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.deploy.test_deploy import zspa_serve_accepts
from zspa_serve.cli import our_parser

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_LIMIT = 12_000

pytestmark = pytest.mark.usefixtures("restored_environment")  # zspa_serve_accepts sets variables (tests/conftest.py)

FENCE = re.compile(r"^ {0,3}(```|~~~)[^\n]*\n(.*?)^ {0,3}\1[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _id(page: Path) -> str:
    return str(page.relative_to(REPO))


def code_blocks(text: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text outside fenced code blocks, inline code spans blanked."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`]*`", "``", text)


def code_lines(text: str) -> list[str]:
    """The lines of every code block, with backslash continuations joined."""
    lines = []
    for block in code_blocks(text):
        for line in re.sub(r"[ \t]*\\\n\s*", " ", block).splitlines():
            lines.append(line.strip())
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", FENCE.sub("", page.read_text()), re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def relative_links(page: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(page.read_text()))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)  # http:, https:, mailto:, ...
    ]


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", (REPO / "Makefile").read_text(), re.M))


def make_targets(line: str) -> list[str]:
    """The targets of each `make ...` command on a shell line (variables and options skipped)."""
    targets = []
    for command in re.split(r"&&|\|\||;|\|", line):
        if re.match(r"\s*make(\s|$)", command):
            words = shlex.split(command, comments=True)
            targets += [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    return targets


def zspa_serve_lines(text: str) -> list[str]:
    return [line for line in code_lines(text) if re.match(r"^(\$\s*)?zspa-serve(\s|$)", line)]


# --- the README -----------------------------------------------------------------------


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move detail into docs/ (limit {README_LIMIT})"


def test_every_docs_page_is_linked_from_the_readme():
    assert DOCS, "docs/ has no pages"
    linked = {(README.parent / target.split("#")[0]).resolve() for target in relative_links(README)}
    missing = [_id(page) for page in DOCS if page.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_code_fences_are_closed(page):
    fences = re.findall(r"^ {0,3}(?:```|~~~)", page.read_text(), re.M)
    assert len(fences) % 2 == 0, f"{_id(page)} has an unclosed code block"
    assert "```" not in FENCE.sub("", page.read_text()), f"{_id(page)}: a fence the parser does not pair"


# --- links ------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_relative_links_point_at_existing_files(page):
    broken = []
    for target in relative_links(page):
        path = target.split("#")[0]
        if path and not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{_id(page)} links to missing files: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_anchors_of_links_exist(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path) if path else page
        if anchor and linked.suffix == ".md" and linked.exists() and anchor not in anchors(linked):
            broken.append(target)
    assert not broken, f"{_id(page)} links to headings that do not exist: {broken}"


def test_the_slug_rule():
    assert slug("Serving: `zspa-serve`") == "serving-zspa-serve"
    assert slug("Families with one run per image, and adding one") == "families-with-one-run-per-image-and-adding-one"
    assert slug("zspa-serve's flags") == "zspa-serves-flags"


# --- commands in code blocks --------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_make_targets_in_code_blocks_exist(page):
    known = makefile_targets()
    assert {"env", "test", "demo"} <= known  # the Makefile was read
    unknown = [t for line in code_lines(page.read_text()) for t in make_targets(line) if t not in known]
    assert not unknown, f"{_id(page)} runs make targets the Makefile lacks: {unknown}"


ZSPA_SERVE_LINES = [(page, line) for page in PAGES for line in zspa_serve_lines(page.read_text())]


def test_there_are_zspa_serve_lines_to_check():
    assert any(page == README for page, _ in ZSPA_SERVE_LINES)
    assert any(page.name == "operations.md" for page, _ in ZSPA_SERVE_LINES)


@pytest.mark.parametrize("page, line", ZSPA_SERVE_LINES, ids=[f"{_id(p)}: {l}" for p, l in ZSPA_SERVE_LINES])
def test_zspa_serve_command_lines_parse(page, line):
    words = shlex.split(line, comments=True)
    words = words[words.index("zspa-serve") + 1 :]
    if words and words[-1] == "&":  # started in the background
        words = words[:-1]
    try:
        zspa_serve_accepts(words)
    except SystemExit as exit:  # argparse's exit 2, after printing what it refused
        pytest.fail(f"{_id(page)}: zspa-serve refuses {line!r} (exit {exit.code})")


def test_line_handling():
    assert make_targets("make check-upstream VLLM=0.35.0   # a comment") == ["check-upstream"]
    assert make_targets("cd x && make -j2 test-unit PYTEST_ARGS='-k x'") == ["test-unit"]
    text = "```bash\nzspa-serve M --port 1 \\\n    --keep-rate 0.5 &\nzspa-show x\n```\n"
    assert zspa_serve_lines(text) == ["zspa-serve M --port 1 --keep-rate 0.5 &"]


# --- docs/operations.md's tables ------------------------------------------------------------


def _section(page: Path, heading: str) -> str:
    text = FENCE.sub("", page.read_text())
    match = re.search(rf"^(#+) {re.escape(heading)}[ \t]*\n(.*?)(?=^#{{1,2}} |\Z)", text, re.M | re.S)
    assert match, f"{_id(page)} has no heading {heading!r}"
    return match.group(2)


def _first_cells(section: str) -> list[str]:
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [row.split("|")[1].strip() for row in rows[2:]]  # past the header and its rule


def test_the_flags_table_names_every_zspa_serve_option():
    options = {o for a in our_parser()._actions for o in a.option_strings} - {"-h", "--help"}
    cells = _first_cells(_section(REPO / "docs/operations.md", "zspa-serve's flags"))
    named = {flag for cell in cells for flag in re.findall(r"--[a-z0-9][a-z0-9-]*", cell)}
    assert options and named == options


def test_the_metrics_table_names_every_metric():
    source = (REPO / "zspa_serve/metrics.py").read_text()
    counters = re.findall(r"Counter\(\s*\"(zspa_\w+)\"", source)
    series = re.findall(r"\"(zspa_\w+)\",\s*\"\w+\",\s*(CounterMetricFamily|GaugeMetricFamily)", source)
    exposed = {f"{name}_total" for name in counters}  # Prometheus adds _total to counters
    exposed |= {f"{name}_total" if kind == "CounterMetricFamily" else name for name, kind in series}
    cells = _first_cells(_section(REPO / "docs/operations.md", "Prometheus metrics"))
    assert counters and series
    assert {cell.strip("`") for cell in cells} == exposed


SELFCHECK_LINES = [(page, line) for page in PAGES for line in code_lines(page.read_text()) if re.match(r"^(\$\s*)?zspa-selfcheck(\s|$)", line)]


def test_zspa_selfcheck_command_lines_parse():
    from zspa_selfcheck.cli import parse_args

    assert any(page == README for page, _ in SELFCHECK_LINES)
    for page, line in SELFCHECK_LINES:
        words = shlex.split(line.removeprefix("$").strip(), comments=True)
        try:
            parse_args(words[1:])
        except SystemExit as exit:
            pytest.fail(f"{_id(page)}: zspa-selfcheck refuses {line!r} (exit {exit.code})")
    with pytest.raises(SystemExit):  # sensitive: a family it does not know
        parse_args(["--families", "llava-1.5,pixtral"])
