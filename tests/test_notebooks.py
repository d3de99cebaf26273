"""Every notebook in notebooks/ runs top to bottom without an error, in its small-model mode.

Each notebook is read into memory and executed there by nbclient (the committed file, with the outputs of a real run,
is never written), with SPECULOOS_NOTEBOOK_SMALL=1 so that it uses the toy pair and few tokens. The kernel is a
`python3` kernelspec written for this run that starts the interpreter running the tests, so the notebooks see the
same environment (speculoos installed) whatever kernelspecs the machine has or lacks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "python3"  # the kernelspec conftest's `kernel_env` fixture writes
CELL_TIMEOUT_S = 300


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_quickstart.ipynb", "02_exactness.ipynb", "03_tuning_k.ipynb"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_small_mode(path, kernel_env, monkeypatch):
    import os

    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    # The kernel inherits this environment: small-model mode, and our kernelspec found first.
    monkeypatch.setenv("SPECULOOS_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [kernel_env, os.environ.get("JUPYTER_PATH")])))

    committed = path.read_bytes()
    nb = nbformat.reads(committed.decode("utf-8"), as_version=4)  # executed in memory, never written back
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL_NAME,
        allow_errors=False,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"{path.name}: a cell raised an error in small mode:\n{exc}", pytrace=False)

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{path.name}: error outputs {[(e.ename, e.evalue) for e in errors]}"
    executed = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in executed), f"{path.name}: not every code cell ran"
    assert path.read_bytes() == committed, f"{path.name} was modified by the test"
