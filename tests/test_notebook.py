"""notebooks/explore.ipynb runs top to bottom on tiny checkpoints."""
import hashlib
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from repsim.store import ActivationFile

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore.ipynb"


def test_explore_notebook_executes(tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORE_CHECKPOINTS", f"{tiny_checkpoints['a']} {tiny_checkpoints['b']}")
    monkeypatch.setenv("EXPLORE_N_TEST", "120")
    monkeypatch.setenv("EXPLORE_N_TRAIN", "300")
    monkeypatch.setenv("EXPLORE_WORK", str(tmp_path / "work"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2   # the heatmap and the probe plot, inline
    # the notebook's files are the commands' cached files, provenance included
    [cached] = (tmp_path / "work").glob("a__test__*.h5")
    with ActivationFile(cached) as f:
        assert f.meta["checkpoint_sha256"] == hashlib.sha256(
            tiny_checkpoints["a"].read_bytes()).hexdigest()
        assert (f.meta["split"], f.n, f.meta["seed"]) == ("test", 120, 0)
