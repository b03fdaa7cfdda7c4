"""The user's guide stays true to the code: the recipe reference is generated and current, every field says
what it does, the README stays a guide, and the docs carry no commit hashes and no broken links."""

import inspect
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

import compress.recipe
from compress.reference import recipe_reference

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
# A commit hash as people paste them: 7-10 lowercase hex characters with at least one digit and one letter.
HASH = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,10}\b")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _models() -> list[type[BaseModel]]:
    """Every section model of the recipe schema (the models defined in compress.recipe that have fields)."""
    return [cls for _, cls in inspect.getmembers(compress.recipe, inspect.isclass)
            if issubclass(cls, BaseModel) and cls.__module__ == compress.recipe.__name__ and cls.model_fields]


def test_recipe_reference_is_current():
    page = (ROOT / "docs" / "recipe.md").read_text()
    assert page == recipe_reference(), (
        "docs/recipe.md is not what the schema renders; run `.venv/bin/python -m compress.reference > docs/recipe.md`")


def test_reference_has_every_section_and_key():
    page = recipe_reference()
    for name, info in compress.recipe.Recipe.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            assert f"\n## {name}\n" in page
            for key in info.annotation.model_fields:
                assert f"| `{name}.{key}` |" in page


@pytest.mark.parametrize("cls", _models(), ids=lambda c: c.__name__)
def test_every_field_has_a_description(cls):
    missing = [name for name, info in cls.model_fields.items() if not (info.description or "").strip()]
    assert not missing, f"{cls.__name__}: fields without a description: {missing}"


def test_readme_is_a_short_guide_that_starts_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 300, "README.md is a user's guide: at most 300 lines; move detail to docs/"
    first = re.search(r"```(\w*)\n(.*?)```", text, re.DOTALL)
    assert first is not None and first.group(1) == "sh"
    lines = first.group(2).strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("make distill") and lines[1].startswith("make test")
    assert text.index("```") < text.index("\n## ")  # the commands come before any section


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_commit_hashes(page):
    found = HASH.findall(page.read_text())
    assert not found, f"{page.name}: commit hashes {found}; evidence with hashes belongs in results/README.md"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL, or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.name}: links to missing files {broken}"


def test_the_checks_catch_what_they_look_for():
    assert HASH.findall("until cb6b0b7 it was; on 1b17e17 too") == ["cb6b0b7", "1b17e17"]
    assert not HASH.findall("100000000 records, sha256 8220a1a9037b, deadbeef, 1234567")
    assert LINK.findall("see [the guide](docs/search.md#budget) and [x](https://e.org)") == [
        "docs/search.md#budget", "https://e.org"]
