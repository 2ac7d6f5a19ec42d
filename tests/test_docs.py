"""The front-door documents stand on their own in a clone: no link leaves the repository, every file they link
exists, and benchmarks/README.md lists every benchmark script with its claim and last figure."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT

DOCS = ["README.md", "docs/CONTRIBUTING.md", "docs/DESIGN.md", "benchmarks/README.md"]
SCRIPT_KINDS = ("bench_", "sweep_", "make_")  # benchmarks/: scripts by kind; other modules are their helpers


@pytest.mark.parametrize("doc", DOCS)
def test_no_link_leaves_the_repository(doc):
    text = (ROOT / doc).read_text()
    assert not re.findall(r"https?://|\.\./", text), doc
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):  # markdown links and images
        assert (ROOT / doc).parent.joinpath(target).resolve().is_file(), f"{doc} links {target}, not in the tree"
    for path in re.findall(r"`((?:docs|benchmarks|tests|examples|nas|cli)/[\w./-]+\.(?:py|md|png|yaml|csv))`", text):
        assert (ROOT / path).is_file(), f"{doc} names {path}, not in the tree"


def test_the_benchmark_table_lists_every_benchmark_once_with_a_figure():
    text = (ROOT / "benchmarks" / "README.md").read_text()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    listed = {name for row in rows for name in re.findall(r"`([\w]+\.py)`", row[1]) if name.startswith(SCRIPT_KINDS)}
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name.startswith(SCRIPT_KINDS)}
    assert listed == scripts
    for claim, script, command, figure, _machine in rows:
        assert claim.strip() and figure.strip(), script
        for name in re.findall(r"`([\w]+\.py)`", script):
            if not name.startswith(SCRIPT_KINDS):
                assert (ROOT / "benchmarks" / name).is_file(), name  # a helper named beside its script
                continue
            assert f"benchmarks/{name}" in command or name.startswith("make_"), (name, command)
        assert "issue" not in claim.lower()
    for path in (ROOT / "benchmarks").glob("*.py"):
        docstring = path.read_text().split('"""')[1]
        assert not re.search(r"\bissue\b", docstring, re.I), f"{path.name}: speak of the claim, not of an issue"
