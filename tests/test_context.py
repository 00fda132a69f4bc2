"""Neighbouring slices as input channels (2.5-D) and per-slice normalisation: data, training, predict, export."""
import warnings

import numpy as np
import pytest
import torch

from helpers.checkpoint import load_checkpoint
from helpers.config import Config
from helpers.data import SliceDataset, load_dataset, neighbour_rows, rescale, stack_neighbours, volume_level
from helpers.export import Deployable, export
from helpers.inference import predict_probabilities
from helpers.predict import predict, volume_probabilities
from helpers.scans import read_slice
from helpers.train import train_run
from helpers.transforms import eval_transform, train_transform


def test_neighbours_come_from_the_same_patient_in_slice_order(synthetic_dir):
    table = load_dataset(synthetic_dir)
    shuffled = table.sample(frac=1, random_state=0).reset_index(drop=True)
    rows = neighbour_rows(shuffled, 2)
    slices, patients = shuffled["slice"].to_numpy(), shuffled["patient"].to_numpy()
    first, last = table["slice"].min(), table["slice"].max()
    for i in range(len(shuffled)):
        assert (patients[rows[i]] == patients[i]).all()
        expected = np.clip(slices[i] + np.arange(-2, 3), first, last)  # the ends repeat
        assert slices[rows[i]].tolist() == expected.tolist()


def test_dataset_stacks_the_neighbours_the_way_predict_does(synthetic_dir):
    table = load_dataset(synthetic_dir)
    rows = table[table.patient == table.patient[0]].reset_index(drop=True)
    cfg = Config(image_size=64, mean=(0.2, 0.3, 0.4), std=(0.2, 0.2, 0.2), context=1, in_channels=3)
    level = volume_level([read_slice(p) for p in rows.image_path])
    dataset = SliceDataset(rows, eval_transform(cfg), native_masks=True, scales={rows.patient[0]: level}, context=1)
    stacked = stack_neighbours([rescale(read_slice(p), level) for p in rows.image_path], 1)
    for k in (0, 5, len(rows) - 1):
        image, mask = dataset[k]
        assert image.shape == (9, 64, 64) and mask.shape == (1, 256, 256)
        expected = eval_transform(cfg)(image=stacked[k])["image"].transpose(2, 0, 1)
        np.testing.assert_allclose(image.numpy(), expected)
    # The middle three channels are the slice itself, as the plain 2-D dataset gives it.
    plain = SliceDataset(rows, eval_transform(Config(**{**cfg.to_dict(), "context": 0})), native_masks=True,
                         scales={rows.patient[0]: level})
    assert torch.equal(dataset[4][0][3:6], plain[4][0])


def test_training_augmentation_moves_all_slices_together(synthetic_dir):
    table = load_dataset(synthetic_dir)
    cfg = Config(image_size=64, mean=(0.2, 0.3, 0.4), std=(0.2, 0.2, 0.2), context=1, augment="strong", seed=4)
    same = np.zeros((64, 64, 3), np.uint8)
    same[20:40, 10:30] = 200
    for _ in range(10):
        out = train_transform(cfg)(image=np.concatenate([same] * 3, axis=2), mask=np.zeros((64, 64), np.uint8))
        image = out["image"]
        # Identical slices in, identical slices out: geometry and the per-sequence gain are shared (noise aside).
        assert np.abs(image[..., :3] - image[..., 3:6]).mean() < 0.1
        assert np.abs(image[..., 6:] - image[..., 3:6]).mean() < 0.1
    with pytest.raises(ValueError, match="context must be"):
        Config(context=-1)


@pytest.fixture(scope="module")
def trained_context(tmp_path_factory, synthetic_dir):
    """A 2.5-D model (one neighbour each side, InstanceNorm) trained for a few epochs on the synthetic tree."""
    run = tmp_path_factory.mktemp("context") / "run"
    cfg = Config(run_dir=str(run), device="cpu", image_size=64, features=(8, 16, 32, 64), batch_size=8, epochs=20,
                 lr=3e-3, seed=3, context=1, norm="instance")
    result = train_run(cfg, load_dataset(synthetic_dir), progress=False)
    model, cfg, _ = load_checkpoint(run / "best.pt")
    return model, cfg, result


def test_a_context_model_learns_and_predicts_like_evaluate(trained_context, synthetic_dir, tmp_path):
    model, cfg, result = trained_context
    assert cfg.context == 1 and cfg.norm == "instance" and model.downs[0][0].in_channels == 9
    assert result.best_val_dice > 0.5, result.history
    table = load_dataset(synthetic_dir)
    rows = table[table.patient == table.patient[0]].reset_index(drop=True)
    images = [read_slice(p) for p in rows.image_path]
    np.testing.assert_allclose(np.stack(volume_probabilities(model, images, cfg)),
                               predict_probabilities(model, rows, cfg), atol=1e-6)
    single = predict(model, cfg, rows.image_path[3], tmp_path / "one", volume_view=False, progress=False)
    assert single.slices["slice"].tolist() == [rows.slice[3]]  # a lone slice is its own neighbour


def test_a_context_model_exports_with_its_input_channels(trained_context, synthetic_dir, tmp_path):
    model, cfg, _ = trained_context
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checks = export(model, cfg, tmp_path / "export")
    assert checks["torchscript"]["max_abs_diff"] < 1e-6 and checks["onnx"]["max_abs_diff"] < 1e-4, checks
    table = load_dataset(synthetic_dir)
    rows = table[table.patient == table.patient[0]].reset_index(drop=True)
    images = [read_slice(p) for p in rows.image_path]
    level = volume_level(images, cfg.intensity)
    x = np.stack(stack_neighbours([rescale(im, level) for im in images], cfg.context)).transpose(0, 3, 1, 2)
    # The graph leaves the mirror-image TTA out (preprocessing.json records it), so compare without it.
    plain = Config(**{**cfg.to_dict(), "amp": "off", "channels_last": False, "tta": False})
    with torch.no_grad():
        graph = Deployable(model, plain)(torch.from_numpy(x).float())[:, 0].numpy()
    assert np.abs(graph - np.stack(volume_probabilities(model, images, plain))).max() < 0.02
