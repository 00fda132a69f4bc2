import os
import shutil
import sys
import types

import pytest

from helpers import source as source_module
from helpers.config import Config
from helpers.data import DataError
from helpers.source import resolve_data


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch, tmp_path):
    """Each test starts with no Kaggle credentials, whatever the machine has."""
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))


def _cfg(tmp_path, **kw):
    return Config(download_dir=str(tmp_path / "data"), synthetic_patients=2, synthetic_slices=3, **kw)


def test_config_path_wins(tmp_path, synthetic_dir, capsys):
    src = resolve_data(_cfg(tmp_path, data_dir=str(synthetic_dir)), kaggle_input=tmp_path / "none")
    assert (src.path, src.kind) == (synthetic_dir, "config")
    assert "data_dir set in the config" in capsys.readouterr().out


def test_a_config_path_without_slices_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'empty'}: data_dir has no kaggle_3m slices"):
        resolve_data(_cfg(tmp_path, data_dir=str(tmp_path / "empty")), kaggle_input=tmp_path / "none")


def test_kaggle_input_is_found_and_its_duplicate_tree_ignored(tmp_path, synthetic_dir, capsys):
    kaggle_input = tmp_path / "input"
    shutil.copytree(synthetic_dir, kaggle_input / "lgg-mri-segmentation" / "kaggle_3m")
    shutil.copytree(synthetic_dir, kaggle_input / "lgg-mri-segmentation" / "lgg-mri-segmentation" / "kaggle_3m")
    src = resolve_data(_cfg(tmp_path), kaggle_input=kaggle_input)
    assert src.kind == "kaggle-input" and src.path == kaggle_input / "lgg-mri-segmentation" / "kaggle_3m"
    assert "attached to this Kaggle notebook" in capsys.readouterr().out


def test_an_earlier_download_is_reused(tmp_path, synthetic_dir, monkeypatch):
    shutil.copytree(synthetic_dir, tmp_path / "data" / "lgg-mri-segmentation" / "kaggle_3m")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    monkeypatch.setattr(source_module, "download_from_kaggle", lambda target: pytest.fail("downloaded again"))
    src = resolve_data(_cfg(tmp_path), kaggle_input=tmp_path / "none")
    assert src.kind == "local" and src.path == tmp_path / "data" / "lgg-mri-segmentation" / "kaggle_3m"


def _fake_kaggle(monkeypatch, synthetic_dir, calls, fail=False):
    def dataset_download_files(dataset, path, unzip, quiet):
        calls.append((dataset, path, unzip))
        if fail:
            # Some clients echo the request, credentials included, in their errors.
            raise RuntimeError(f"403 Forbidden for token {os.environ.get('KAGGLE_API_TOKEN')}")
        for copy in ("kaggle_3m", "lgg-mri-segmentation/kaggle_3m"):  # the real zip holds the tree twice
            shutil.copytree(synthetic_dir, f"{path}/{copy}")

    module = types.ModuleType("kaggle")
    module.api = types.SimpleNamespace(dataset_download_files=dataset_download_files)
    monkeypatch.setitem(sys.modules, "kaggle", module)


def test_downloads_with_credentials(tmp_path, synthetic_dir, monkeypatch, capsys):
    (tmp_path / "kaggle-config").mkdir()
    (tmp_path / "kaggle-config" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    calls = []
    _fake_kaggle(monkeypatch, synthetic_dir, calls)
    src = resolve_data(_cfg(tmp_path), kaggle_input=tmp_path / "none")
    target = tmp_path / "data" / "lgg-mri-segmentation"
    assert calls == [("mateuszbuda/lgg-mri-segmentation", str(target), True)]
    assert src.kind == "download" and src.path == target / "kaggle_3m"
    assert "fresh download" in capsys.readouterr().out


def test_a_failed_download_falls_back_to_synthetic_and_says_why(tmp_path, synthetic_dir, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_API_TOKEN", "s3cr3t-kaggle-token")
    calls = []
    _fake_kaggle(monkeypatch, synthetic_dir, calls, fail=True)
    src = resolve_data(_cfg(tmp_path), kaggle_input=tmp_path / "none")
    out = capsys.readouterr().out
    assert calls and src.synthetic and "403 Forbidden" in out and "SYNTHETIC" in out
    assert "s3cr3t" not in out  # credentials are never printed


def test_no_data_and_no_credentials_gives_synthetic_without_touching_kaggle(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(source_module, "download_from_kaggle", lambda target: pytest.fail("tried to download"))
    monkeypatch.delitem(sys.modules, "kaggle", raising=False)
    src = resolve_data(_cfg(tmp_path), kaggle_input=tmp_path / "none")
    assert src.synthetic and src.path == tmp_path / "data" / "synthetic" / "kaggle_3m"
    assert len(list(src.path.glob("*/*_mask.tif"))) == 6
    assert "kaggle" not in sys.modules
    assert "SYNTHETIC" in capsys.readouterr().out
