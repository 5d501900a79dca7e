"""The documentation: README.md (the landing page) and docs/*.md.

Links must lead somewhere, the README must stay a landing page, the cache
recipes it shows must run as written, and no path of a developer's machine
may be published.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from cli_helpers import tlkit_cli
from synthetic import make_class_folder

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 220

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`+[^`\n]*`+")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
MACHINE_PATH = re.compile(r"/(?:work|root|home)/")
RECIPE = re.compile(r"<!-- test_docs: (?P<name>[^>]+?) -->\n```python\n(?P<code>.*?)^```", re.MULTILINE | re.DOTALL)


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """Markdown without code blocks and code spans, where links and headings are not links or headings."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def anchors(page: Path) -> set[str]:
    """The fragment ids GitHub gives the headings of a page (lower case, punctuation dropped, '-' for spaces)."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        result.add(slug if n == 0 else f"{slug}-{n}")
    return result


def relative_links(page: Path) -> list[str]:
    targets = LINK.findall(prose(page.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.IGNORECASE)]  # http:, mailto:, ...


def test_the_documentation_exists():
    names = {p.name for p in DOCS.glob("*.md")}
    assert {"index.md", "embedding.md", "cache-format.md", "heads.md", "seed-experiment.md", "cache-tools.md",
            "ray.md", "performance.md", "design.md"} <= names


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page):
    links = relative_links(page)
    broken = []
    for link in links:
        path, _, fragment = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link} (no file {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target})")
        elif fragment and target.suffix == ".md" and fragment not in anchors(target):
            broken.append(f"{link} (no heading #{fragment} in {target.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_link_checker_sees_a_broken_link(tmp_path):
    # The checker must be able to fail: a page with one good and one broken link of each kind.
    (tmp_path / "there.md").write_text("# A heading: with `code`\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#a-heading-with-code) [gone](missing.md) [bad](there.md#nope) "
                    "[web](https://example.org/x) `[code](not-a-link.md)`\n```\n[block](nor-this.md)\n```\n")
    assert relative_links(page) == ["there.md#a-heading-with-code", "missing.md", "there.md#nope"]
    assert anchors(tmp_path / "there.md") == {"a-heading-with-code"}


def test_the_index_lists_every_page_and_the_readme_links_the_index():
    listed = {link.partition("#")[0] for link in relative_links(DOCS / "index.md")}
    missing = sorted(p.name for p in DOCS.glob("*.md") if p.name != "index.md" and p.name not in listed)
    assert not missing, f"docs/index.md does not list {missing}"
    assert "docs/index.md" in relative_links(README)


def test_readme_is_a_landing_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    text = "\n".join(lines)
    for needed in ("make test", "make demo", "make reproduce", "tlkit embed", "tlkit fit-head", "tlkit report",
                   "tlkit predict", "tlkit train-scratch", "tlkit info", "tlkit verify", "tlkit merge"):
        assert needed in text, needed


def test_no_machine_paths_are_published():
    found = []
    for path in [README, *sorted(p for p in DOCS.rglob("*") if p.is_file())]:
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "paths of a development machine: " + "; ".join(found)


def readme_recipes() -> dict[str, str]:
    return {m["name"]: m["code"] for m in RECIPE.finditer(README.read_text(encoding="utf-8"))}


def test_readme_cache_recipes_run_as_written(tmp_path, monkeypatch):
    recipes = readme_recipes()
    assert set(recipes) == {"h5py recipe", "tlkit.cache recipe"}, "the README's marked cache recipes"
    data = tmp_path / "data"
    for split, n in (("train", 3), ("val", 2)):
        for seed, name in enumerate(("ants", "bees")):
            make_class_folder(data / split / name, n, seed=seed + (10 if split == "val" else 0))
    monkeypatch.chdir(tmp_path)
    proc = tlkit_cli("embed", data, "cache/feats.h5", "--weights", "random", "--workers", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr

    namespaces = {}
    for name, code in recipes.items():
        namespace: dict = {}
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"README.md ({name})", "exec"), namespace)  # noqa: S102 - the README's own code
        assert "random:seed=0" in out.getvalue(), out.getvalue()
        namespaces[name] = namespace
    plain, ours = namespaces["h5py recipe"], namespaces["tlkit.cache recipe"]
    assert plain["class_names"] == ["ants", "bees"]
    assert plain["X_train"].shape == (6, 512) and plain["y_train"].tolist() == [0, 0, 0, 1, 1, 1]
    assert [p.split("/")[:2] for p in plain["paths"]] == [["train", "ants"]] * 3 + [["train", "bees"]] * 3
    assert (ours["X_train"] == plain["X_train"]).all() and ours["X_val"].shape == (4, 512)
