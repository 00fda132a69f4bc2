"""Where the data comes from: one function that tries each source in order and says which one it used."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .data import EXPECTED_LAYOUT, DataError, find_kaggle_3m
from .synthetic import write_synthetic_dataset

KAGGLE_DATASET = "mateuszbuda/lgg-mri-segmentation"
KAGGLE_INPUT = Path("/kaggle/input")


@dataclass(frozen=True)
class DataSource:
    path: Path  # the kaggle_3m folder
    kind: str  # "config", "kaggle-input", "local", "download" or "synthetic"

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"


def kaggle_credentials_present() -> bool:
    """True when the kaggle package would find credentials (env variables or files under ~/.kaggle)."""
    if os.environ.get("KAGGLE_API_TOKEN") or (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")):
        return True
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (folder / "kaggle.json").is_file() or (folder / "access_token").is_file()


def _redacted(text: str) -> str:
    """``text`` with any Kaggle credential from the environment replaced: messages are printed and logged."""
    for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        if secret := os.environ.get(name):
            text = text.replace(secret, "***")
    return text


def download_from_kaggle(target: Path) -> Path:
    """Download and unzip the dataset with the official client into ``target``; returns ``target``."""
    import kaggle  # imported here only: without credentials the import prints an authentication banner

    target.mkdir(parents=True, exist_ok=True)
    kaggle.api.dataset_download_files(KAGGLE_DATASET, path=str(target), unzip=True, quiet=False)
    return target


def _kaggle_input(root: Path) -> Path | None:
    preferred = find_kaggle_3m(root / "lgg-mri-segmentation")
    return preferred if preferred is not None else find_kaggle_3m(root)


def resolve_data(cfg: Config, kaggle_input: Path = KAGGLE_INPUT) -> DataSource:
    """The first source that has the data: (a) ``cfg.data_dir``; (b) the Kaggle Kernels input folder;
    (c) an earlier download under ``cfg.download_dir``; (d) a Kaggle download when credentials exist;
    (e) synthetic tiles written under ``cfg.download_dir/synthetic``. Prints the choice."""
    download_dir = Path(cfg.download_dir)
    source = None
    if cfg.data_dir is not None:
        path = find_kaggle_3m(cfg.data_dir)
        if path is None:
            raise DataError(f"{cfg.data_dir}: data_dir has no kaggle_3m slices (expected {EXPECTED_LAYOUT})")
        source = DataSource(path, "config")
    elif kaggle_input.is_dir() and (path := _kaggle_input(kaggle_input)) is not None:
        source = DataSource(path, "kaggle-input")
    elif (path := find_kaggle_3m(download_dir / "lgg-mri-segmentation")) is not None or (
            path := find_kaggle_3m(download_dir / "kaggle_3m")) is not None:
        source = DataSource(path, "local")
    elif kaggle_credentials_present():
        try:
            path = find_kaggle_3m(download_from_kaggle(download_dir / "lgg-mri-segmentation"))
        except Exception as error:  # network, quota, terms not accepted: fall back, but say why
            print(f"Kaggle download of {KAGGLE_DATASET} failed ({type(error).__name__}: {_redacted(str(error))}); "
                  "using synthetic tiles instead")
        else:
            if path is not None:
                source = DataSource(path, "download")
            else:
                print(f"Kaggle download into {download_dir} holds no kaggle_3m slices; using synthetic tiles")
    if source is None:
        path = write_synthetic_dataset(download_dir / "synthetic", cfg.synthetic_patients, cfg.synthetic_slices,
                                       seed=cfg.seed)
        source = DataSource(path, "synthetic")
    messages = {
        "config": "the data_dir set in the config",
        "kaggle-input": "the dataset attached to this Kaggle notebook",
        "local": "an earlier download",
        "download": f"a fresh download of {KAGGLE_DATASET}",
        "synthetic": ("SYNTHETIC tiles (no dataset found: attach it on Kaggle, set data_dir, or add Kaggle "
                      "credentials). Numbers below say nothing about real MRI"),
    }
    print(f"Data source: {messages[source.kind]} -> {source.path}")
    return source
