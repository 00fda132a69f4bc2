import json

from conftest import REPO


def test_notebook_is_committed_without_outputs():
    notebook = json.loads((REPO / "BrainMRI_TumorSegmentation.ipynb").read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert not cell["outputs"] and cell["execution_count"] is None, "".join(cell["source"])[:80]
