"""predict on new scans (slice, patient folder, tree; with and without masks), bad input, and the exports."""
import shutil
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pandas as pd
import pytest

from helpers.checkpoint import load_checkpoint
from helpers.config import Config
from helpers.data import DataError, load_dataset
from helpers.export import Deployable, export
from helpers.inference import predict_masks, predict_probabilities
from helpers.predict import predict, volume_masks, volume_probabilities
from helpers.scans import find_scans, read_slice
from helpers.train import train_run

from conftest import REPO


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_dir):
    """A small model trained for a few epochs on the synthetic tree: it finds most of the synthetic tumours."""
    run = tmp_path_factory.mktemp("predict") / "run"
    cfg = Config(run_dir=str(run), device="cpu", image_size=64, features=(8, 16, 32, 64), batch_size=8, epochs=12,
                 lr=3e-3, seed=3)
    train_run(cfg, load_dataset(synthetic_dir), progress=False)
    model, cfg, _ = load_checkpoint(run / "best.pt")
    return model, cfg, run / "best.pt"


def _patient(synthetic_dir, k=0):
    return sorted(p for p in synthetic_dir.iterdir() if p.is_dir())[k]


def _read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_predict_uses_the_evaluation_pipeline(trained, synthetic_dir):
    model, cfg, _ = trained
    table = load_dataset(synthetic_dir)
    rows = table[table.patient == table.patient[0]].reset_index(drop=True)
    images = [read_slice(p) for p in rows.image_path]
    ours = np.stack(volume_probabilities(model, images, cfg))
    np.testing.assert_allclose(ours, predict_probabilities(model, rows, cfg), atol=1e-6)


def test_predict_on_a_patient_folder_writes_masks_overlays_and_summary(trained, synthetic_dir, tmp_path):
    model, cfg, _ = trained
    folder = _patient(synthetic_dir)
    result = predict(model, cfg, folder, tmp_path / "out", progress=False)
    table = load_dataset(synthetic_dir)
    rows = table[table.patient == folder.name].reset_index(drop=True)
    expected = predict_masks(model, rows, cfg)  # what evaluate scores
    assert expected.any()
    for k, image in enumerate(rows.image_path):
        stem = image.rsplit("/", 1)[-1].removesuffix(".tif")
        pred = _read(tmp_path / "out" / f"{stem}_pred.png")
        assert pred.shape == (256, 256) and set(np.unique(pred)) <= {0, 255}
        np.testing.assert_array_equal(pred > 0, expected[k])
        has_overlay = (tmp_path / "out" / f"{stem}_overlay.png").exists()
        assert has_overlay == bool(expected[k].any() or rows.has_tumour[k])
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary.patient.tolist() == [folder.name]
    row = summary.iloc[0]
    areas = [int(a) for a in row.tumour_pixels_per_slice.split(";")]
    assert row.slices == len(rows) and areas == expected.sum((1, 2)).tolist()
    assert row.tumour_pixels == expected.sum() and row.slices_with_tumour == int(expected.any((1, 2)).sum())
    assert row.true_tumour_pixels == rows.tumour_pixels.sum() and 0 < row.dice <= 1
    assert (tmp_path / "out" / f"{folder.name}_volume.png").exists()
    gif = tmp_path / "out" / f"{folder.name}_volume.gif"
    from PIL import Image
    with Image.open(gif) as animation:
        assert animation.n_frames == len(rows)
    assert len(pd.read_csv(tmp_path / "out" / "slices.csv")) == len(rows)
    assert result.slices_per_second > 0


def test_predict_on_one_unlabelled_png_slice(trained, synthetic_dir, tmp_path):
    model, cfg, _ = trained
    source = sorted(_patient(synthetic_dir).glob("*_6.tif"))[0]
    slice_png = tmp_path / "scan.png"
    cv2.imwrite(str(slice_png), cv2.imread(str(source)))  # no mask beside it
    result = predict(model, cfg, slice_png, tmp_path / "out", progress=False)
    assert _read(tmp_path / "out" / "scan_pred.png").shape == (256, 256)
    assert result.summary.slices.tolist() == [1] and pd.isna(result.summary.dice[0])


def test_predict_on_a_tree_writes_one_folder_and_row_per_patient(trained, synthetic_dir, tmp_path):
    model, cfg, _ = trained
    result = predict(model, cfg, synthetic_dir, tmp_path / "out", volume_view=False, progress=False)
    patients = sorted(p.name for p in synthetic_dir.iterdir() if p.is_dir())
    assert sorted(result.summary.patient) == patients
    for patient in patients:
        assert len(list((tmp_path / "out" / patient).glob("*_pred.png"))) == 12
    assert not list((tmp_path / "out").rglob("*_volume.*"))
    # Predicting into the input folder and running again reads slices only, not its own outputs.
    copy = shutil.copytree(_patient(synthetic_dir), tmp_path / "again")
    predict(model, cfg, copy, copy, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its own csv files and GIF are not "ignored files" either
        assert find_scans(copy).table.shape[0] == 12
    (copy / "notes.txt").write_text("scanner protocol")
    with pytest.warns(UserWarning, match="ignored 1 files .*notes.txt"):
        find_scans(copy)


def _copy_patient(synthetic_dir, tmp_path):
    return shutil.copytree(_patient(synthetic_dir), tmp_path / "patient")


@pytest.mark.parametrize("kind", ["16-bit", "opaque RGBA"])
def test_16_bit_and_opaque_rgba_slices_are_converted(trained, synthetic_dir, tmp_path, kind):
    model, cfg, _ = trained
    plain = predict(model, cfg, _patient(synthetic_dir), tmp_path / "plain", progress=False).slices
    folder = _copy_patient(synthetic_dir, tmp_path)
    for f in sorted(folder.glob("*[0-9].tif")):
        bgr = cv2.imread(str(f))
        f.unlink()
        if kind == "16-bit":  # as a scanner export would: another scale, more levels
            cv2.imwrite(str(f.with_suffix(".png")), bgr.astype(np.uint16) * 200)
        else:
            cv2.imwrite(str(f.with_suffix(".png")), np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)]))
    converted = predict(model, cfg, folder, tmp_path / "converted", progress=False).slices
    assert len(converted) == len(plain)
    if kind == "opaque RGBA":  # alpha dropped: the same pixels
        assert converted.tumour_pixels.tolist() == plain.tumour_pixels.tolist()
    else:  # one linear map per volume, undone by the per-volume intensity level up to rounding
        assert converted.tumour_pixels.sum() == pytest.approx(plain.tumour_pixels.sum(), rel=0.05)


@pytest.mark.parametrize("kind", ["grayscale", "varying alpha", "unreadable"])
def test_unusable_slices_are_skipped_and_listed_or_stop_with_strict(trained, synthetic_dir, tmp_path, kind):
    model, cfg, _ = trained
    folder = _copy_patient(synthetic_dir, tmp_path)
    bad = sorted(folder.glob("*_5.tif"))[0]
    image = cv2.imread(str(bad))
    if kind == "grayscale":
        cv2.imwrite(str(bad), image[..., 1])
    elif kind == "varying alpha":
        cv2.imwrite(str(bad), np.dstack([image, np.arange(256, dtype=np.uint8)[None].repeat(256, 0)]))
    else:
        bad.write_bytes(b"II*\x00 not really a TIFF")
    with pytest.warns(UserWarning, match=rf"skipped 1 slices.*{bad.name}"):
        result = predict(model, cfg, folder, tmp_path / "out", progress=False)
    assert len(result.slices) == 11 and result.summary.skipped[0] == 1
    assert pd.read_csv(tmp_path / "out" / "summary.csv").skipped_files[0] == bad.name
    skipped = pd.read_csv(tmp_path / "out" / "skipped.csv")
    assert skipped.file.tolist() == [str(bad)]
    expected = {"grayscale": "1 channel", "varying alpha": "varying alpha", "unreadable": "cannot be read"}[kind]
    assert expected in skipped.reason[0]
    with pytest.raises(DataError, match=rf"{bad.name}: .*{expected}"):
        predict(model, cfg, folder, tmp_path / "strict", strict=True, progress=False)


def test_empty_or_missing_input_is_a_clear_error(trained, tmp_path):
    model, cfg, _ = trained
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no slices found"):
        predict(model, cfg, tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="nothing_here: no such file or folder"):
        predict(model, cfg, tmp_path / "nothing_here", tmp_path / "out", progress=False)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a scan")
    with pytest.raises(DataError, match="notes.txt: not a slice"):
        find_scans(notes)


def test_cli_predict_on_a_single_slice_and_a_bad_one(trained, synthetic_dir, tmp_path):
    _, _, checkpoint = trained
    source = sorted(_patient(synthetic_dir).glob("*_6.tif"))[0]
    run = [sys.executable, "-m", "helpers", "predict", "--checkpoint", str(checkpoint), "--quiet"]
    proc = subprocess.run(run + ["--input", str(source), "--out", str(tmp_path / "out")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "slices/s" in proc.stdout and (tmp_path / "out" / f"{source.stem}_pred.png").exists()
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), cv2.imread(str(source))[..., 1])
    proc = subprocess.run(run + ["--input", str(gray), "--out", str(tmp_path / "bad")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "gray.png: 1 channel" in proc.stderr and "Traceback" not in proc.stderr


def test_predict_on_a_real_patient_folder(trained, real_sample, tmp_path):
    model, cfg, _ = trained
    folder = sorted(p for p in real_sample.iterdir() if p.is_dir())[0]
    n = len(list(folder.glob("*[0-9].tif")))
    result = predict(model, cfg, folder, tmp_path / "out", progress=False)
    assert result.summary.slices.tolist() == [n] and len(list((tmp_path / "out").glob("*_pred.png"))) == n
    assert not pd.isna(result.summary.dice[0])  # its masks were found and scored


def test_exports_agree_with_pytorch(trained, tmp_path):
    model, cfg, _ = trained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checks = export(model, cfg, tmp_path / "export")
    # TorchScript runs the same kernels; ONNX Runtime its own fp32 kernels.
    assert checks["torchscript"]["max_abs_diff"] < 1e-6, checks
    assert checks["onnx"]["max_abs_diff"] < 1e-4, checks
    assert {p.name for p in (tmp_path / "export").iterdir()} == {"model.onnx", "model.torchscript.pt",
                                                                 "preprocessing.json"}


def test_exported_graph_matches_the_predict_pipeline(trained, synthetic_dir):
    import torch

    model, cfg, _ = trained
    # The graph leaves the mirror-image TTA out (preprocessing.json records it), so compare without it.
    cfg = Config.from_dict({**cfg.to_dict(), "amp": "off", "channels_last": False, "tta": False})
    table = load_dataset(synthetic_dir)
    rows = table[table.patient == table.patient[0]].reset_index(drop=True)
    images = [read_slice(p) for p in rows.image_path]
    from helpers.data import rescale, volume_level
    level = volume_level(images, cfg.intensity)
    x = torch.from_numpy(np.stack([rescale(im, level) for im in images]).transpose(0, 3, 1, 2)).float()
    with torch.no_grad():
        graph = Deployable(model, cfg)(x)[:, 0].numpy()
    pipeline = np.stack(volume_probabilities(model, images, cfg))
    # The pipeline rounds the resized slice to 8 bits before normalising; the graph does not.
    assert np.abs(graph - pipeline).max() < 0.02


@pytest.mark.parametrize("intensity", ["volume", "brain", "landmarks"])
def test_predict_scales_a_volume_as_evaluation_does(synthetic_dir, intensity):
    from helpers.checkpoint import build_model

    cfg = Config(image_size=32, features=(4, 8, 16, 32), batch_size=5, workers=0, device="cpu", amp="off",
                 mean=(0.3,) * 3, std=(0.2,) * 3, intensity=intensity)
    model = build_model(cfg).eval()
    table = load_dataset(synthetic_dir)
    rows = table[table.patient == table.patient[1]].reset_index(drop=True)
    images = [read_slice(p) for p in rows.image_path]
    np.testing.assert_allclose(np.stack(volume_probabilities(model, images, cfg)),
                               predict_probabilities(model, rows, cfg), atol=1e-6)


def test_slices_of_different_sizes_get_the_per_slice_clean_up_holes_filled():
    ring = np.full((32, 32), 0.9, np.float32)
    ring[10:20, 10:20] = 0.1  # 100 hole pixels
    small = np.zeros((24, 24), np.float32)  # another size: no 3-D clean-up possible
    filled, empty = volume_masks([ring, small], Config())
    assert filled.all() and not empty.any()
    assert volume_masks([ring, small], Config(fill_holes=False))[0].sum() == 32 * 32 - 100
