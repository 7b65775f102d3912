"""The README tells the truth: its snippets name only what they define, and its version
matrix figures are those of the latest matrix run (compat/LATEST_MATRIX.txt)."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def _snippets():
    return re.findall(r"```python\n(.*?)```", _readme(), re.S)


@pytest.mark.parametrize("index", range(len(_snippets())))
def test_readme_snippet_names_only_what_it_or_the_quick_start_defines(index, tmp_path):
    """A snippet runs as written after the first one (the quick start defines ``tc``,
    ``data`` and ``model``): pyflakes finds no undefined name."""
    blocks = _snippets()
    code = blocks[0] + "\n" + blocks[index] if index else blocks[0]
    path = tmp_path / "snippet.py"
    path.write_text(code)
    done = subprocess.run([sys.executable, "-m", "pyflakes", str(path)], capture_output=True,
                          text=True)
    undefined = [line for line in done.stdout.splitlines() if "undefined name" in line]
    assert not undefined, (blocks[index], undefined)


def test_readme_matrix_figures_are_the_latest_runs():
    with open(os.path.join(ROOT, "compat", "LATEST_MATRIX.txt")) as f:
        latest = f.read()
    runs = re.findall(r"^Task: (\w+).*?largest prediction difference over compared cells: "
                      r"(\S+)", latest, re.S | re.M)
    cells = re.search(r"Result: (\d+) of (\d+) cells work", latest).groups()
    assert len(runs) == 3
    readme = " ".join(_readme().split())
    assert f"{cells[0]} of {cells[1]} cells work" in readme
    for task, diff in runs:
        assert f"{task} {diff}" in readme, (task, diff)
