import json

from conftest import REPO


def test_notebook_is_committed_without_outputs():
    notebook = json.loads((REPO / "BrainMRI_TumorSegmentation.ipynb").read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert not cell["outputs"] and cell["execution_count"] is None, "".join(cell["source"])[:80]


def test_notebook_config_cell_sets_every_knob_to_its_default():
    """The config cell near the top lists every Config field with the library's default (its own run_dir aside),
    so the notebook, the CLI and the tests start from the same recipe and no knob is hidden."""
    import dataclasses

    from helpers.config import Config

    notebook = json.loads((REPO / "BrainMRI_TumorSegmentation.ipynb").read_text())
    cell = next("".join(c["source"]) for c in notebook["cells"]
                if c["cell_type"] == "code" and "cfg = Config(" in "".join(c["source"]))
    namespace: dict = {}
    exec(cell, namespace)
    cfg = namespace["cfg"]
    assert cfg == Config(run_dir=cfg.run_dir)
    hidden = {"in_channels", "mean", "std"}  # fixed by the data, measured on the training patients
    named = {f.name for f in dataclasses.fields(Config) if f"    {f.name}=" in cell}
    assert named == {f.name for f in dataclasses.fields(Config)} - hidden
