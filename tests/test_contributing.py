"""The worked examples in docs/CONTRIBUTING.md (add a block, a search strategy, a device backend) run as written."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "CONTRIBUTING.md"


def examples() -> dict[str, str]:
    """``{section title: python code}`` for every ``### `` section of the doc holding a python block."""
    found = {}
    for section in re.split(r"^### ", DOC.read_text(), flags=re.M)[1:]:
        title = section.splitlines()[0].strip()
        code = re.findall(r"```python\n(.*?)```", section, flags=re.S)
        if code:
            found[title] = "\n".join(code)
    return found


def test_the_doc_has_the_three_worked_examples():
    assert {"Add a block", "Add a search strategy", "Add a device backend"} <= set(examples())


@pytest.mark.parametrize("title", sorted(examples()))
def test_worked_example_runs(title, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(examples()[title])
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                               "HWNAS_LATENCY_TABLES": str(tmp_path / "tables")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip(), "a worked example prints what it shows"
