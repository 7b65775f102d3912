"""Execute the notebooks in place and stamp each code cell with the hash of its source.

    python scripts/run_notebooks.py [notebooks/x.ipynb ...]

The notebooks are committed *with* their outputs (plots, tables, drawn boxes), so that
they read on a code host. ``tests/test_notebooks.py`` fails when a committed notebook has
a code cell without outputs, or one whose source changed after it was executed (its
``metadata.toolkit.source_sha256`` no longer matches): rerun this script then.
"""

import glob
import hashlib
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_hash(cell):
    """SHA-256 of a cell's source, as the stamp records it."""
    source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def run(path, timeout=1200):
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.metadata.setdefault("toolkit", {})["source_sha256"] = source_hash(cell)
    nbformat.write(nb, path)
    print(f"{os.path.relpath(path, ROOT)}: executed in {time.perf_counter() - started:.0f}s")


def main(argv):
    paths = argv or sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
    for path in paths:
        run(os.path.abspath(path))


if __name__ == "__main__":
    main(sys.argv[1:])
