"""The README and docs/: short README, every relative link and image resolves, the CLI reference
matches the parsers, and the quick-start example runs."""
import re
import subprocess
import sys

import pytest
from helpers import ROOT, user_env

from pipeline.cli.reference import reference

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page):
    """GitHub's anchors of a Markdown page's headings."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def broken_links(page):
    bad = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(target)
    return bad


def test_the_readme_is_short_and_the_docs_are_pages_of_their_own():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
    assert len(PAGES) - 1 >= 5


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_image_resolves(page):
    assert broken_links(page) == []


def test_the_link_check_finds_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A heading\n")
    page.write_text("[ok](there.md) [ok](there.md#a-heading) ![missing](gone.png) [bad](there.md#nope)\n")
    assert broken_links(page) == ["gone.png", "there.md#nope"]


def makefile_variables(text: str) -> set[str]:
    """The variables a user sets on the make command line (the Makefile's ``NAME ?=``), but the
    two that name the programs."""
    return set(re.findall(r"^([A-Z_]+) *\?=", text, re.M)) - {"PYTHON", "CNN"}


def test_the_readmes_make_variables_are_the_makefiles_and_make_help_names_each():
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"`make help` lists the targets and their variables \(`([A-Z_ \n]+)`\)",
                       (ROOT / "README.md").read_text())
    assert listed, "the README's sentence on make help moved"
    wanted = makefile_variables(makefile)
    assert set(listed.group(1).split()) == wanted
    help_text = "\n".join(re.findall(r'^\t@echo "(.*)"$', makefile.split("\nhelp:", 1)[1].split("\n\n", 1)[0], re.M))
    assert {v for v in wanted if not re.search(rf"\b{v}=", help_text)} == set(), help_text
    # the check finds a variable the README leaves out (shown once)
    assert makefile_variables(makefile + "\nEXTRA ?= 1\n") != set(listed.group(1).split())


def test_the_cli_reference_matches_the_parsers():
    assert (ROOT / "docs" / "cli.md").read_text() == reference(), \
        "docs/cli.md is stale: python -m pipeline.cli.reference > docs/cli.md"


@pytest.mark.slow
def test_the_quickstart_example_goes_from_images_to_predictions(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], cwd=tmp_path, env=user_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(l.startswith("120 images, 1280 values per code") for l in lines), done.stdout
    accuracy = float(next(l for l in lines if l.startswith("test accuracy")).split()[2].rstrip(","))
    assert accuracy >= 0.9  # real ImageNet weights on real photographs
    predictions = [l for l in lines if l.startswith("umbrella/")]
    assert len(predictions) == 3 and all("%" in l for l in predictions)
    assert list((tmp_path / "runs").glob("*-logreg/model.keras"))


def layout_problems(text: str, root=ROOT) -> list[str]:
    """What docs/development.md's layout gets wrong: a private module of the package it does not
    name (``_name.py``, each under the subpackage it lists it in), a tests/ or pipeline/ file it
    names that is not there."""
    problems = []
    for module in sorted((root / "pipeline").rglob("_*.py")):
        if module.name.startswith("__"):
            continue
        owner = module.parent.relative_to(root).as_posix()
        entry = re.search(rf"^{re.escape(owner)}/.*?(?=^\S)", text + "\nend", re.S | re.M) if owner != "pipeline" else None
        if module.name not in (entry.group(0) if entry else text):
            problems.append(f"{module.relative_to(root)} not described")
    for named in re.findall(r"\b((?:tests|pipeline)/[\w/]+\.py)\b", text):
        if not (root / named).exists():
            problems.append(f"{named} named but not there")
    return problems


def test_the_development_page_names_every_module_where_it_is_and_no_file_that_is_gone():
    text = (ROOT / "docs" / "development.md").read_text()
    assert not layout_problems(text)
    # and the check sees a module left out, one listed under another package, and a file gone
    assert layout_problems(text.replace("_probe.py", "probe")) == ["pipeline/heads/_probe.py not described"]
    moved = text.replace(" _trained.py a run's training list", "").replace("_probe.py the", "_probe.py, _trained.py the")
    assert layout_problems(moved) == ["pipeline/reports/_trained.py not described"]
    assert layout_problems(text + "\ntests/codes/test_gone.py\n") == ["tests/codes/test_gone.py named but not there"]
