"""The documentation matches the code: settings, variables, links, and the front door's size."""

from __future__ import annotations

import re
from pathlib import Path

from easel.shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# Read by the client and the CLI's client commands, not by the server: not settings.
CLIENT_VARIABLES = {"EASEL_API_URL", "EASEL_API_KEY"}
ROW = re.compile(r"^\| `(EASEL_[A-Z0-9_]+)` \|(.*)\|\s*$", flags=re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def doc_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def without_code(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def slugs(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``path``."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(
        r"^#{1,6} (.+)$", re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S), flags=re.M
    ):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def headings(path: Path) -> set[str]:
    """The section titles of ``path``, lower case, without a leading "N. "."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {title.strip().lower() for title in re.findall(r"^#{1,6} (?:\d+\. )?(.+)$", text, flags=re.M)}


def settings_variables() -> set[str]:
    return {f"EASEL_{name.upper()}" for name in Settings.model_fields}


def configuration_rows() -> list[tuple[str, list[str]]]:
    text = (DOCS / "configuration.md").read_text()
    return [(name, [cell.strip() for cell in rest.split(" | ")]) for name, rest in ROW.findall(text)]


def test_configuration_documents_every_setting_once_and_no_other() -> None:
    names = [name for name, _ in configuration_rows()]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    assert not duplicated, f"documented more than once in docs/configuration.md: {duplicated}"
    expected = settings_variables()
    assert not expected - set(names), (
        f"settings missing from docs/configuration.md: {sorted(expected - set(names))}"
    )
    assert not set(names) - expected, (
        f"docs/configuration.md documents no such setting: {sorted(set(names) - expected)}"
    )


def test_configuration_rows_give_each_plain_default_and_a_meaning() -> None:
    for name, cells in configuration_rows():
        assert len(cells) == 2 and all(cells), f"{name}: row needs a default and a meaning, got {cells}"
        field = Settings.model_fields.get(name.removeprefix("EASEL_").lower())
        if field is None:
            continue  # not a setting: the test above names it
        default = field.default
        if default is None or default == "":
            continue  # computed or unset: the row says what happens instead
        shown = re.search(r"`([^`]*)`", cells[0])
        assert shown, f"{name}: default {default!r} not shown in backticks: {cells[0]!r}"
        if isinstance(default, bool):
            assert shown.group(1) == str(default).lower(), (name, default, shown.group(1))
        elif isinstance(default, int | float):
            assert float(shown.group(1)) == float(default), (name, default, shown.group(1))
        else:
            assert shown.group(1) == str(default), (name, default, shown.group(1))


def harness_variables() -> set[str]:
    """``EASEL_TEST_*`` variables the test and benchmark harness reads (where its servers are)."""
    found: set[str] = set()
    for path in [*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        if path.name != Path(__file__).name:
            found |= set(re.findall(r"EASEL_TEST_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    return found


def test_every_variable_the_docs_mention_exists() -> None:
    client_code = (ROOT / "easel" / "client.py").read_text() + (ROOT / "easel" / "cli.py").read_text()
    assert all(variable in client_code for variable in CLIENT_VARIABLES)
    known = settings_variables() | CLIENT_VARIABLES | harness_variables()
    for page in doc_pages():
        mentioned = set(re.findall(r"EASEL_[A-Z0-9_]*[A-Z0-9]", page.read_text()))
        assert mentioned <= known, (
            f"{page.relative_to(ROOT)} names unknown variables: {sorted(mentioned - known)}"
        )


def test_readme_is_a_short_front_door() -> None:
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/*.md"
    for needed in ("make run", "make test", "curl ", "postgresql", "redis-server", "chromium"):
        assert needed in text, f"README.md no longer says {needed!r}"
    pictures = re.findall(r"!\[[^\]]*\]\((docs/images/[\w.-]+\.png)\)", text)
    assert pictures, "README.md shows no walkthrough picture from docs/images"


def test_every_relative_link_points_at_something_that_exists() -> None:
    broken = []
    for page in doc_pages():
        for target in LINK.findall(without_code(page.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            resolved = (page.parent / path_part).resolve() if path_part else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in slugs(resolved):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_source_path_the_docs_name_exists() -> None:
    """Paths such as `worker/engine/claims.py` in code spans name files of this repository."""
    pattern = re.compile(
        r"`((?:easel|shared|web|worker|migrations|tests|bench|docs|\.ci)/[\w./-]+\.(?:py|md|yml|toml))`"
    )
    missing = []
    for page in doc_pages():
        for path in pattern.findall(page.read_text()):
            if not (ROOT / path).exists():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
    assert not missing, "docs name files that do not exist:\n" + "\n".join(missing)


def test_readme_links_every_docs_page() -> None:
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)[#)]", README.read_text()))
    pages = {path.name for path in DOCS.glob("*.md")}
    assert pages - linked == set(), f"docs pages the README does not link: {sorted(pages - linked)}"


def test_docs_citations_in_the_code_name_sections_that_exist() -> None:
    """Code cites `docs/design.md, principle N` or `docs/<page>.md, "Section"`: both must exist."""
    design = (DOCS / "design.md").read_text()
    principles = {int(n) for n in re.findall(r"^### (\d+)\. ", design, flags=re.M)}
    assert principles == set(range(1, 17)), sorted(principles)
    wrong = []
    sources = [ROOT / name for name in ("pyproject.toml", "Makefile", "Dockerfile", "docker-compose.yml")]
    for folder in ("easel", "shared", "web", "worker", "migrations", "bench", "tests"):
        sources += (ROOT / folder).rglob("*.py")
    for path in sources:
        if path.exists() and path.resolve() != Path(__file__).resolve():
            text = path.read_text()
            where = path.relative_to(ROOT)
            if re.search(r"DESIGN principles? \d", text):
                wrong.append(f"{where}: cites a design brief outside the repository")
            for cited in re.findall(r"docs/design\.md,? principles? ([\d, and]+)", text):
                numbers = {int(n) for n in re.findall(r"\d+", cited)}
                if not numbers <= principles:
                    wrong.append(f"{where}: no principle {sorted(numbers - principles)}")
            for page, title in re.findall(r'docs/([\w-]+\.md),? "([^"]+)"', text):
                target = DOCS / page
                if not target.exists():
                    wrong.append(f"{where}: no docs/{page}")
                elif title.lower() not in headings(target):
                    wrong.append(f"{where}: docs/{page} has no section {title!r}")
    assert not wrong, "\n".join(wrong)


def test_ci_runs_the_test_command_the_readme_names() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in README.read_text()
