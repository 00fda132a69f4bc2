import albumentations as A
import numpy as np
import pytest

from helpers.config import Config
from helpers.transforms import BiasField, eval_transform, train_transform


def _square_slice(rng):
    image = (rng.random((256, 256, 3)) * 40).astype(np.uint8)
    mask = np.zeros((256, 256), np.uint8)
    y, x = rng.integers(30, 180, size=2)
    mask[y:y + 50, x:x + 40] = 1
    image[mask.astype(bool)] = 230
    return image, mask


@pytest.mark.parametrize("policy", ["light", "strong"])
def test_augmentation_moves_image_and_mask_together(policy):
    cfg = Config(image_size=128, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), augment=policy)
    transform = train_transform(cfg)
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(30):
        image, mask = _square_slice(rng)
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (128, 128, 3) and out["mask"].shape == (128, 128)
        assert set(np.unique(out["mask"])) <= {0, 1}
        bright = out["image"][..., 1] > 0.6
        inter = (bright & (out["mask"] == 1)).sum()
        union = (bright | (out["mask"] == 1)).sum()
        assert inter / union > 0.85
        resized = eval_transform(cfg)(image=image, mask=mask)["mask"]
        changed += not np.array_equal(resized, out["mask"])
    assert changed > 10  # the pipeline really augments


def test_eval_transform_normalises_per_channel():
    cfg = Config(image_size=64, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    image = np.full((256, 256, 3), 255, np.uint8)
    out = eval_transform(cfg)(image=image, mask=np.zeros((256, 256), np.uint8))["image"]
    assert np.allclose(out[0, 0], [(1 - 0.1) / 0.5, (1 - 0.2) / 0.5, (1 - 0.3) / 0.5], atol=1e-4)


def test_channel_gain_scales_each_channel_on_its_own():
    cfg = Config(image_size=32, mean=(0.0,) * 3, std=(1.0,) * 3, augment="light", intensity_jitter=0.0,
                 channel_gain=0.3)
    transform = train_transform(cfg)
    image = np.full((256, 256, 3), 100, np.uint8)
    ratios = []
    for seed in range(40):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=np.zeros((256, 256), np.uint8))["image"]
        level = out[8:24, 8:24].reshape(-1, 3).mean(0) * 255 / 100  # centre pixels: no affine border
        ratios.append(level)
    ratios = np.array(ratios)
    assert ratios.min() >= 0.69 and ratios.max() <= 1.31
    assert (np.abs(ratios[:, 0] - ratios[:, 1]) > 0.02).any()  # channels get different gains
    assert (np.abs(ratios - 1) < 1e-3).all(axis=1).any()  # and some slices none (p=0.5)


def test_channel_gamma_changes_each_channels_contrast_on_its_own():
    cfg = Config(image_size=32, mean=(0.0,) * 3, std=(1.0,) * 3, augment="light", intensity_jitter=0.0,
                 channel_gain=0.0, channel_gamma=0.5)
    transform = train_transform(cfg)
    image = np.zeros((256, 256, 3), np.uint8)
    image[:, :128], image[:, 128:] = 64, 160  # "brain" and "tumour" halves
    contrasts = []
    for seed in range(40):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=np.zeros((256, 256), np.uint8))["image"]
        contrasts.append(out[12:20, 20:28].reshape(-1, 3).mean(0) / out[12:20, 4:12].reshape(-1, 3).mean(0))
    contrasts = np.array(contrasts)
    mirrored = contrasts[:, 0] < 1  # a horizontal flip swaps the halves
    contrasts[mirrored] = 1 / contrasts[mirrored]
    # gamma g maps 160/64 = 2.5 to 2.5 ** g with g in [1/1.5, 1.5]
    assert contrasts.min() > 2.5 ** (1 / 1.5) - 0.05 and contrasts.max() < 2.5 ** 1.5 + 0.1
    assert (np.abs(contrasts[:, 0] - contrasts[:, 1]) > 0.1).any()  # channels get different gammas
    assert (np.abs(contrasts - 2.5) < 0.05).all(axis=1).any()  # and some slices none (p=0.5)
    with pytest.raises(ValueError, match="channel_gamma"):
        Config(channel_gamma=-0.1)


def test_augmentation_policies():
    assert Config(augment=True).augment == "light" and Config(augment=False).augment == "off"  # old configs
    with pytest.raises(ValueError, match="augment must be one of"):
        Config(augment="heavy")
    cfg = Config(image_size=32, mean=(0.0,) * 3, std=(1.0,) * 3, augment="off")
    image = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    mask = np.zeros((256, 256), np.uint8)
    assert np.array_equal(train_transform(cfg)(image=image, mask=mask)["image"],
                          eval_transform(cfg)(image=image, mask=mask)["image"])


@pytest.mark.parametrize("context", [0, 1])
def test_sequence_dropout_blanks_one_sequence_to_its_mean(context):
    mean = (0.2, 0.4, 0.6)
    cfg = Config(image_size=32, mean=mean, std=(1.0,) * 3, augment="light", intensity_jitter=0.0,
                 channel_gain=0.0, sequence_dropout=0.5, context=context)
    transform = train_transform(cfg)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3 * cfg.slices), dtype=np.uint8)
    dropped = []
    for seed in range(60):
        transform.set_random_seed(seed)
        out = transform(image=image, mask=np.zeros((64, 64), np.uint8))["image"]
        flat = out.reshape(-1, cfg.slices, 3)  # pixels x slices x sequences
        blank = [bool(np.abs(flat[:, :, s]).max() < 0.003) for s in range(3)]  # (round(255 m) / 255 - m) / 1
        assert sum(blank) <= 1
        if any(blank):
            dropped.append(blank.index(True))
            assert flat[:, :, dropped[-1]].std(axis=0).max() < 1e-6  # the whole sequence, in every slice
    assert 15 <= len(dropped) <= 45 and set(dropped) == {0, 1, 2}  # about half the slices, any sequence
    with pytest.raises(ValueError, match="sequence_dropout"):
        Config(sequence_dropout=1.0)


@pytest.mark.parametrize("size", [128, 256])
def test_elastic_bends_image_and_mask_together_by_about_two_percent(size):
    cfg = Config(image_size=size, mean=(0.0,) * 3, std=(1 / 255,) * 3, augment="light", intensity_jitter=0.0,
                 channel_gain=0.0, elastic=0.99)
    (elastic,) = [t for t in train_transform(cfg).transforms if isinstance(t, A.ElasticTransform)]
    assert elastic.p == 0.99
    rows, cols = np.mgrid[0:size, 0:size]
    image = np.stack([cols, rows, np.zeros_like(rows)], -1).astype(np.float32)  # each pixel holds its position
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4:3 * size // 4, size // 4:3 * size // 4] = 1
    shifts, outlines = [], []
    for seed in range(8):
        elastic.set_random_seed(seed)
        out = elastic(image=image, mask=mask)
        inner = (slice(size // 8, -size // 8),) * 2  # away from the border, where pixels leave the image
        shifts.append(np.hypot(*(out["image"][inner][..., :2] - image[inner][..., :2]).transpose(2, 0, 1)))
        # the mask moved with the image: its pixels are those whose source position was in the square
        source = out["image"][..., :2].round().astype(int).clip(0, size - 1)
        expected = mask[source[..., 1], source[..., 0]]
        outlines.append((out["mask"] != expected).mean())
    rms = float(np.sqrt(np.mean(np.square(shifts)))) / size
    assert 0.01 < rms < 0.04
    assert max(outlines) < 0.005  # off by rounding at the outline only
    with pytest.raises(ValueError, match="elastic"):
        Config(elastic=1.0)


def test_bias_field_is_a_smooth_bounded_gain_per_channel():
    cfg = Config(image_size=128, mean=(0.0,) * 3, std=(1 / 255,) * 3, augment="light", intensity_jitter=0.0,
                 channel_gain=0.0, bias_field=0.3)
    (field,) = [t for t in train_transform(cfg).transforms if isinstance(t, BiasField)]
    assert field.p == 0.5 and field.limit == 0.3
    field.p = 1.0
    image = np.full((128, 128, 3), 100, np.uint8)
    mask = np.zeros((128, 128), np.uint8)
    mask[40:80, 40:80] = 1
    peaks = []
    for seed in range(20):
        field.set_random_seed(seed)
        out = field(image=image, mask=mask)
        gain = out["image"].astype(np.float64) / 100
        assert np.array_equal(out["mask"], mask)  # an intensity change only
        assert gain.min() >= np.exp(-0.3) - 0.01 and gain.max() <= np.exp(0.3) + 0.01
        assert np.abs(np.diff(gain, axis=0)).max() < 0.03 and np.abs(np.diff(gain, axis=1)).max() < 0.03  # smooth
        peaks.append(np.abs(np.log(gain)).max(axis=(0, 1)))
        assert not np.allclose(gain[..., 0], gain[..., 1], atol=0.02)  # each sequence its own field
    assert 0.2 < np.max(peaks) <= 0.31 and np.min(peaks) < 0.15  # strengths drawn from [0, limit]
    field.set_random_seed(3)
    first = field(image=image)["image"]
    field.set_random_seed(3)
    assert np.array_equal(first, field(image=image)["image"])  # seeded
    with pytest.raises(ValueError, match="bias_field"):
        Config(bias_field=1.5)


def test_bias_field_is_shared_by_the_slices_of_a_sequence_in_2_5_d():
    field = BiasField(0.3, sequences=3, p=1.0)
    field.set_random_seed(0)
    gain = field(image=np.full((64, 64, 9), 100, np.uint8))["image"].astype(np.float64) / 100
    for sequence in range(3):
        assert np.array_equal(gain[..., sequence], gain[..., sequence + 3])
        assert np.array_equal(gain[..., sequence], gain[..., sequence + 6])
    assert not np.allclose(gain[..., 0], gain[..., 1], atol=0.02)


@pytest.mark.parametrize("policy", ["off", "strong"])
def test_crop_cuts_one_window_of_image_and_mask(policy):
    cfg = Config(image_size=128, crop=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), augment=policy)
    transform = train_transform(cfg)
    rng = np.random.default_rng(1)
    offsets = set()
    for _ in range(20):
        image, mask = _square_slice(rng)
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (64, 64, 3) and out["mask"].shape == (64, 64)
        bright = out["image"][..., 1] > 0.6
        assert (bright != (out["mask"] == 1)).mean() < 0.05  # the window is the same for image and mask
        if policy == "off":  # no other change: the window lies somewhere in the resized slice
            whole = eval_transform(cfg)(image=image, mask=mask)["image"]
            hits = [(y, x) for y in range(65) for x in range(65)
                    if np.array_equal(whole[y:y + 64, x:x + 64], out["image"])]
            assert hits
            offsets.add(hits[0])
    assert policy != "off" or len(offsets) > 10  # windows drawn at random


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_crop_on_tumour_keeps_a_tumour_at_the_rim_in_that_share_of_windows(share):
    cfg = Config(image_size=128, crop=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), augment="off",
                 crop_on_tumour=share, seed=3)
    transform = train_transform(cfg)
    image = np.zeros((128, 128, 3), np.uint8)
    corner = np.zeros((128, 128), np.uint8)
    corner[2:6, 2:6] = 1  # a random 32 px window holds it about once in 250 draws
    kept = np.mean([transform(image=image, mask=corner)["mask"].any() for _ in range(300)])
    assert abs(kept - share) < 0.1
    empty = transform(image=image, mask=np.zeros_like(corner))  # no tumour: a window anywhere
    assert empty["image"].shape == (32, 32, 3) and empty["mask"].shape == (32, 32)
    with pytest.raises(ValueError, match="crop_on_tumour"):
        Config(crop_on_tumour=1.5)
    with pytest.raises(ValueError, match="crop is 0"):
        Config(crop_on_tumour=0.5, device="cuda").resolved()  # a GPU trains on whole slices unless told otherwise


def test_a_cpu_with_real_data_trains_on_windows_of_three_quarters_of_the_side_unless_told_otherwise():
    assert Config(device="cpu").resolved().crop == 96  # of the 128 px default
    assert Config(device="cpu", image_size=64).resolved().crop == 48
    assert Config(device="cpu", image_size=200).resolved().crop == 144  # 150, down to a multiple of 16
    assert Config(device="cpu", crop=0).resolved().crop == 0  # the user's choice is kept
    assert Config(device="cpu", crop=64).resolved().crop == 64
    assert Config(device="cpu").resolved(synthetic=True).crop == 0  # synthetic tiles: whole slices
    assert Config(device="cuda").resolved().crop == 0  # a GPU: the seed's whole 256 px slices


def test_a_cpu_with_real_data_places_every_tumour_slices_window_on_the_tumour_unless_told_otherwise():
    assert Config(device="cpu").resolved().crop_on_tumour == 1.0
    assert Config(device="cpu", crop_on_tumour=0.5).resolved().crop_on_tumour == 0.5  # the user's choice is kept
    assert Config(device="cpu", crop=0).resolved().crop_on_tumour == 0.0  # whole slices: nothing to place
    assert Config(device="cpu", image_size=16).resolved().crop_on_tumour == 0.0  # a 12 px window rounds to none
    assert Config(device="cpu").resolved(synthetic=True).crop_on_tumour == 0.0
    assert Config(device="cuda").resolved().crop_on_tumour == 0.0
    saved = {k: v for k, v in Config(device="cpu").resolved().to_dict().items() if k != "crop_on_tumour"}
    assert Config.from_dict(saved).crop_on_tumour == 0.0  # runs saved before the knob placed windows anywhere
    unresolved = Config(image_size=64, crop=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), augment="off")
    out = train_transform(unresolved)(image=np.zeros((64, 64, 3), np.uint8), mask=np.zeros((64, 64), np.uint8))
    assert out["image"].shape == (32, 32, 3)  # None reads as no placement, not an error


def test_crop_must_fit_the_image_and_the_poolings():
    with pytest.raises(ValueError, match="multiple of 16"):
        Config(crop=100)
    with pytest.raises(ValueError, match="must not exceed image_size"):
        Config(image_size=64, crop=96)
    with pytest.raises(ValueError, match="must not exceed image_size"):
        Config(crop=160, device="cpu").resolved()  # the CPU default size is 128
