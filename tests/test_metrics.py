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


def test_recall_weight_is_a_tversky_index_that_punishes_misses():
    target = torch.zeros(1, 1, 10, 10)
    target[..., :4, :] = 1  # 40 tumour pixels
    under, over = target.clone(), target.clone()
    under[..., 3, :] = 0  # 10 tumour pixels missed
    over[..., 4, :] = 1  # 10 false alarms
    logits = lambda mask: (mask * 2 - 1) * 30  # probabilities of (almost exactly) 0 and 1
    dice = build_loss(Config(loss="dice", recall_weight=0.5))
    tversky = build_loss(Config(loss="dice", recall_weight=0.7))
    assert dice(logits(under), target) == pytest.approx(1 - (2 * 30 + 1) / (30 + 40 + 1), abs=1e-5)  # soft Dice
    ratio = lambda loss: loss(logits(under), target) / loss(logits(over), target)  # miss against false alarm
    assert ratio(dice) < 1.5 < ratio(tversky)
    with pytest.raises(ValueError, match="recall_weight"):
        Config(recall_weight=1.0)
    # A run saved before the knob existed trained with the plain Dice, and resumes with it.
    saved = Config().to_dict()
    del saved["recall_weight"]
    assert Config.from_dict(saved).recall_weight == 0.5 and Config().recall_weight == 0.7


def test_dice_over_slices_weighs_a_small_tumour_like_a_large_one():
    target = torch.zeros(3, 1, 20, 20)
    target[0, :, :10, :] = 1  # a large tumour, 200 pixels
    target[1, :, :2, :2] = 1  # a small one, 4 pixels; slice 2 has none
    logits = lambda mask: (mask * 2 - 1) * 30
    miss_small, miss_large = target.clone(), target.clone()
    miss_small[1] = 0  # the small tumour missed whole
    miss_large[0, :, :2, :2] = 0  # as many pixels missed in the large one
    batch = build_loss(Config(loss="dice", recall_weight=0.5))
    per_slice = build_loss(Config(loss="dice", recall_weight=0.5, dice_over="slice"))
    # Over the batch both errors are 4 pixels of 204; per slice, the small slice scores 0.2 and the mean is 0.6.
    assert batch(logits(miss_small), target) == pytest.approx(batch(logits(miss_large), target).item(), abs=1e-4)
    assert per_slice(logits(miss_small), target) == pytest.approx(1 - (1 + 0.5 / 2.5) / 2, abs=1e-3)
    assert per_slice(logits(miss_small), target) > 20 * per_slice(logits(miss_large), target)
    # Slices without tumour are left to the BCE term, unless the batch has no tumour at all.
    false_alarm = target.clone()
    false_alarm[2, :, 5:9, 5:9] = 1
    assert per_slice(logits(false_alarm), target) == pytest.approx(per_slice(logits(target), target).item(), abs=1e-5)
    empty = torch.zeros(2, 1, 8, 8)
    assert per_slice(logits(empty), empty) == pytest.approx(batch(logits(empty), empty).item(), abs=1e-6)
    with pytest.raises(ValueError, match="dice_over must be one of"):
        Config(dice_over="patient")


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError, match="loss must be one of"):
        Config(loss="focal")


def test_summary_report_keys_and_conventions():
    from helpers.metrics import summarize

    # patient A: a tumour slice half found plus an empty slice with a false alarm; patient B: perfect.
    counts = np.array([[2, 2, 4], [0, 2, 0], [3, 3, 3]])
    out = summarize(["A", "A", "B"], counts)
    assert out["per_patient"] == {"A": pytest.approx(2 * 2 / (4 + 4)), "B": 1.0}
    assert out["mean_patient_dice"] == pytest.approx(0.75) and out["median_patient_dice"] == pytest.approx(0.75)
    # tumour slices only: slice 1 (2*2/(2+4)) and slice 3 (1.0); the empty slice is not counted
    assert out["tumour_slice_dice"] == pytest.approx((4 / 6 + 1) / 2)
    assert out["iou"] == pytest.approx((2 / 4 + 1) / 2)
    assert out["precision"] == pytest.approx(5 / 7) and out["recall"] == pytest.approx(5 / 7)
    assert (out["n_patients"], out["n_slices"], out["n_tumour_slices"]) == (2, 3, 2)
