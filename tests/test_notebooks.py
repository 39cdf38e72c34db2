"""The notebooks execute headless (nbclient) in tiny mode, and are committed with the outputs
of a real seed-shape run: every code cell executed, no error, no profiler noise."""
import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
NOISE = ("SyncActivityProfilerHandler", "profiler_start", "Memory block of unknown size",
         "IProgress not found")


# An absolute path in a notebook is the machine that ran it: meaningless anywhere else. Paths start
# at a root folder of this machine or of the usual others; a "/" after a word, a dot or another
# "/" (tokens/s, ../docs, https://) is not one. Windows: a drive letter and a backslash.
_ROOTS = sorted({"tmp", "work", "home", "root", "Users", "var", "private", "Volumes",
                 *(p.name for p in Path("/").iterdir() if p.is_dir())})
ABSOLUTE_PATH = re.compile(r"(?<![\w.~/:-])/(?:" + "|".join(map(re.escape, _ROOTS)) + r")(?=/|\b)"
                           r"|(?<!\w)[A-Za-z]:\\(?![ntr\"'\\])")


def absolute_paths(nb) -> list:
    """(cell index, the path's surroundings) of every absolute path in the notebook's sources and
    its text outputs (images and widget states are not text)."""
    found = []
    for i, cell in enumerate(nb.cells):
        texts = [cell.source]
        for out in cell.get("outputs", []):
            texts.append(str(out.get("text", "")))
            texts += [str(v) for k, v in out.get("data", {}).items() if k.startswith("text/")]
            texts += [str(line) for line in out.get("traceback", [])]
        for text in texts:
            found += [(i, text[max(0, m.start() - 30):m.end() + 30])
                      for m in ABSOLUTE_PATH.finditer(text)]
    return found


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
def test_committed_without_an_absolute_path(path):
    assert not absolute_paths(nbformat.read(path, as_version=4))


def test_the_absolute_path_check_finds_them_and_only_them():
    text = ("checkpoint: /work/main/checkpoints/seed; run: /tmp/smallmind-nb-1/runs; /Users/a; "
            "/var/folders/x; C:\\Users\\a")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "print(1)", outputs=[nbformat.v4.new_output("stream", name="stdout", text=text)])])
    assert len(absolute_paths(nb)) == 5
    clean = ("checkpoint: ../checkpoints/seed; runs/notebook02/phase1; 12 tokens/s, 3 MB/token; "
             "[docs](../docs/study.md), https://pytorch.org/docs; x / y; print('a:\\n')")
    nb.cells[0].outputs[0].text = clean
    nb.cells[0].source = clean
    assert absolute_paths(nb) == []


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
    assert not absolute_paths(nb)  # what the committed run will print: paths relative to it
