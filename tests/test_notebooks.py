"""The notebooks execute headless (nbclient) in tiny mode, and are committed with the outputs
of a real seed-shape run: every code cell executed, no error, no profiler noise."""
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
NOISE = ("SyncActivityProfilerHandler", "profiler_start", "Memory block of unknown size",
         "IProgress not found")


def _texts(nb):
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            yield out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))


def test_there_are_three_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_reference_model.ipynb", "02_phases_and_profiles.ipynb",
                                           "03_custom_ops.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_with_the_outputs_of_a_real_run(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{path.name} was not executed"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    text = "\n".join(_texts(nb))
    assert "tiny: False" in text  # the seed shape, not the tests' tiny mode
    assert not [n for n in NOISE if n in text]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("SMALLMIND_TINY", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    noise = [n for n in NOISE if n in "\n".join(_texts(nb))]
    assert not noise, noise
