"""The notebooks are committed executed, with pictures, and their outputs are current.

Re-executing them is slow (tests/test_end_to_end.py does it); here the committed files are
read: every code cell has outputs and was executed from its current source (the stamp
``scripts/run_notebooks.py`` writes), and each notebook shows at least one picture.
"""

import glob
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from run_notebooks import source_hash  # noqa: E402


def _read(path):
    import nbformat
    return nbformat.read(path, as_version=4)


def test_there_are_notebooks_for_every_task():
    names = {os.path.basename(p) for p in NOTEBOOKS}
    assert {"activity_classifier.ipynb", "image_classifier.ipynb",
            "object_detector.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_outputs_are_committed_and_current(path):
    nb = _read(path)
    fix = "; rerun `python scripts/run_notebooks.py` and commit the notebook"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        stamp = cell.metadata.get("toolkit", {}).get("source_sha256")
        assert stamp == source_hash(cell), \
            f"{os.path.basename(path)} cell {i} changed since it was executed{fix}"
        assert cell.get("execution_count") is not None and cell.outputs, \
            f"{os.path.basename(path)} cell {i} has no outputs{fix}"
        errors = [o for o in cell.outputs if o.get("output_type") == "error"]
        assert not errors, f"{os.path.basename(path)} cell {i} ended in an error"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_shows_pictures(path):
    pictures = [o for c in _read(path).cells if c.cell_type == "code" for o in c.outputs
                if "image/png" in o.get("data", {})]
    assert pictures, f"{os.path.basename(path)} has no picture among its outputs"
