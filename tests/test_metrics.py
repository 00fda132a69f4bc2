import numpy as np
import pytest
import torch

from helpers.config import Config
from helpers.losses import build_loss
from helpers.metrics import dice, overlap_counts, patient_dice


def test_dice_hand_computed_cases():
    empty, full = np.zeros((4, 4)), np.ones((4, 4))
    half = np.zeros((4, 4))
    half[:2] = 1
    assert dice(empty, empty) == 1.0  # both empty
    assert dice(empty, full) == 0.0  # prediction empty
    assert dice(full, full) == 1.0  # perfect
    assert dice(half, full) == pytest.approx(2 * 8 / (8 + 16))  # half overlap


def test_patient_dice_stacks_slices_into_a_volume():
    probs = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]], [[1.0, 1.0]]])[:, None]  # three slices of 1x2 pixels
    masks = torch.tensor([[[1.0, 1.0]], [[0.0, 0.0]], [[1.0, 1.0]]])[:, None]
    counts = overlap_counts(probs, masks, 0.5)
    assert counts.tolist() == [[1, 1, 2], [0, 0, 0], [2, 2, 2]]
    result = patient_dice(["A", "A", "B"], counts)
    assert result["A"] == pytest.approx(2 * 1 / (1 + 2)) and result["B"] == 1.0


@pytest.mark.parametrize("name", ["bce", "dice", "bce_dice"])
def test_losses_prefer_the_right_answer(name):
    loss = build_loss(Config(loss=name))
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:5, 2:5] = 1
    good, bad = (target * 2 - 1) * 8, -(target * 2 - 1) * 8
    assert loss(good, target) < 0.1 < loss(bad, target)


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError, match="loss must be one of"):
        Config(loss="focal")
