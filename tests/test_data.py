import shutil

import cv2
import numpy as np
import pytest

from helpers.config import Config
from helpers.data import DataError, SliceDataset, find_kaggle_3m, load_dataset, read_image, split_patients
from helpers.synthetic import write_synthetic_dataset


def test_loads_a_synthetic_tree(synthetic_dir):
    table = load_dataset(synthetic_dir)
    assert list(table.columns) == ["patient", "institution", "slice", "image_path", "mask_path",
                                   "has_tumour", "tumour_pixels"]
    assert table["patient"].nunique() == 6 and len(table) == 72
    assert not table.duplicated(["patient", "slice"]).any()
    first = table[table["patient"] == table["patient"].iloc[0]]
    assert first["slice"].tolist() == list(range(1, 13))  # numeric order: 2 before 10
    assert (table["has_tumour"] == (table["tumour_pixels"] > 0)).all()
    assert 0 < table["has_tumour"].mean() < 1


def test_reads_channels_in_dataset_order(tmp_path):
    image = np.zeros((4, 4, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30  # pre-contrast, FLAIR, post-contrast
    cv2.imwrite(str(tmp_path / "x.tif"), image[..., ::-1])  # a TIFF stores RGB; OpenCV writes from BGR
    assert read_image(tmp_path / "x.tif")[0, 0].tolist() == [10, 20, 30]


def test_the_duplicated_kaggle_zip_tree_is_counted_once(tmp_path, synthetic_dir):
    shutil.copytree(synthetic_dir, tmp_path / "kaggle_3m")
    shutil.copytree(synthetic_dir, tmp_path / "lgg-mri-segmentation" / "kaggle_3m")
    assert find_kaggle_3m(tmp_path) == tmp_path / "kaggle_3m"
    assert len(load_dataset(tmp_path)) == 72


def test_loads_the_real_sample(real_sample):
    table = load_dataset(real_sample)
    assert table["patient"].nunique() == 15 and len(table) == 466
    assert table["has_tumour"].sum() == 160
    image, mask = SliceDataset(table)[0]
    assert image.shape == (3, 256, 256) and mask.shape == (1, 256, 256)


def test_a_folder_without_slices_is_a_clear_error(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path}.*no kaggle_3m slices.*TCGA_"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="no kaggle_3m slices"):
        load_dataset(tmp_path / "missing")


def test_an_image_without_its_mask_names_the_file(tmp_path):
    root = write_synthetic_dataset(tmp_path, n_patients=2, n_slices=3, seed=0)
    orphan = sorted(root.glob("*/*_2_mask.tif"))[0]
    orphan.unlink()
    with pytest.raises(DataError, match=orphan.name.replace("_mask", "") + ": image has no mask"):
        load_dataset(root)


def test_a_mask_without_its_image_names_the_file(tmp_path):
    root = write_synthetic_dataset(tmp_path, n_patients=2, n_slices=3, seed=0)
    image = sorted(root.glob("*/*_3.tif"))[0]
    image.unlink()
    with pytest.raises(DataError, match=image.stem + "_mask.tif: mask has no image"):
        load_dataset(root)


def test_split_keeps_patients_whole_and_is_reproducible(synthetic_dir):
    table = load_dataset(synthetic_dir)
    train, val = split_patients(table, 0.34, seed=7)
    assert set(train["patient"]).isdisjoint(val["patient"])
    assert len(train) + len(val) == len(table) and val["patient"].nunique() == 2
    again, _ = split_patients(table, 0.34, seed=7)
    assert again["patient"].tolist() == train["patient"].tolist()
    with pytest.raises(DataError, match="at least 2 patients"):
        split_patients(table[table["patient"] == table["patient"].iloc[0]], 0.2, 0)


def test_split_takes_validation_from_the_largest_institutions(synthetic_dir):
    table = load_dataset(synthetic_dir)
    patients = sorted(table["patient"].unique())
    sizes = {"AA": 3, "BB": 2, "CC": 1}  # as in the sample, a rare institution must keep its patients in training
    names = [name for name, n in sizes.items() for _ in range(n)]
    table["institution"] = table["patient"].map(dict(zip(patients, names, strict=True)))
    drawn = set()
    for seed in range(10):
        train, val = split_patients(table, 0.34, seed)
        assert set(train["patient"]).isdisjoint(val["patient"]) and len(train) + len(val) == len(table)
        counts = val.groupby("patient")["institution"].first().value_counts().to_dict()
        # two picks from the largest left: AA (3 -> 2), then AA or BB (2 each); never CC
        assert counts.get("AA", 0) >= 1 and sum(counts.values()) == 2 and "CC" not in counts
        drawn.add(tuple(sorted(val["patient"].unique())))
    assert len(drawn) > 3  # the seed draws which patients


def test_k_fold_validates_every_patient_exactly_once(real_sample_or_synthetic):
    from helpers.data import patient_folds

    table = load_dataset(real_sample_or_synthetic)
    folds = patient_folds(table, 5, seed=0)
    assert len(folds) == 5
    validated = [p for _, val in folds for p in val["patient"].unique()]
    assert sorted(validated) == sorted(table["patient"].unique())
    for train, val in folds:
        assert set(train["patient"]).isdisjoint(val["patient"])
        assert len(train) + len(val) == len(table)
    with pytest.raises(DataError, match="k-fold needs"):
        patient_folds(table, 1, seed=0)


@pytest.mark.parametrize("method", ["volume", "brain", "landmarks"])
def test_volume_rescaling_removes_a_patients_overall_brightness(tmp_path, method):
    from helpers.data import rescale, volume_scales

    root = write_synthetic_dataset(tmp_path, n_patients=2, n_slices=6, seed=4)
    dim = sorted(root.glob("TCGA_*"))[1]
    for f in dim.glob("*[0-9].tif"):  # the second patient's scanner is 40% darker
        image = cv2.imread(str(f))
        cv2.imwrite(str(f), (image * 0.6).astype(np.uint8))
    table = load_dataset(root)
    scales = volume_scales(table, method=method)
    bright, dark = (scales[p] for p in sorted(scales))
    assert np.allclose(dark / bright, 0.6, atol=0.03)
    first = [rescale(read_image(table[table.patient == p].image_path.iloc[3]), scales[p]) for p in sorted(scales)]
    assert abs(float(first[0].mean()) - float(first[1].mean())) < 0.1 * float(first[0].mean())


def test_brain_level_does_not_depend_on_the_tumour(tmp_path):
    from helpers.data import volume_scales

    root = write_synthetic_dataset(tmp_path, n_patients=1, n_slices=6, seed=5)
    table = load_dataset(root)
    before = {m: volume_scales(table, method=m)[table.patient[0]] for m in ("volume", "brain")}
    for f in root.glob("TCGA_*/*[0-9].tif"):  # a large, very bright FLAIR lesion in every slice
        image = cv2.imread(str(f))
        image[100:140, 100:140, 1] = 255  # cv2 order is BGR: index 1 is the middle channel, FLAIR
        cv2.imwrite(str(f), image)
    after = {m: volume_scales(table, method=m)[table.patient[0]] for m in ("volume", "brain")}
    assert abs(after["brain"][1] / before["brain"][1] - 1) < 0.05  # the brain median barely moves
    assert after["volume"][1] / before["volume"][1] > 1.1  # the bright end is the lesion's


def test_landmarks_put_every_brain_at_one_level_and_the_bright_end_at_255(tmp_path):
    from helpers.data import LANDMARK_LEVEL, brain_pixels, rescale, volume_scales

    root = write_synthetic_dataset(tmp_path, n_patients=2, n_slices=6, seed=7)
    odd = sorted(root.glob("TCGA_*"))[1]
    for f in odd.glob("*[0-9].tif"):  # a scanner whose post-contrast brain is nearly as bright as its bright end
        image = cv2.imread(str(f))
        image[..., 0] = np.round(255 * (image[..., 0] / 255.0) ** 0.4)  # cv2 order is BGR: 0 is post-contrast
        cv2.imwrite(str(f), image)
    table = load_dataset(root)
    medians = {}
    for method in ("volume", "landmarks"):
        scales = volume_scales(table, method=method)
        for patient, rows in table.groupby("patient"):
            pixels = np.concatenate([rescale(read_image(p), scales[patient]).reshape(-1, 3) for p in rows.image_path])
            medians[method, patient] = np.median(pixels[brain_pixels(pixels)], axis=0)
            top = [np.percentile(c[c > 0], 99) for c in pixels.T]
            assert np.allclose(top, 255, atol=2), (method, top)
    normal, bright = sorted(table.patient.unique())
    assert medians["volume", bright][2] - medians["volume", normal][2] > 30  # post-contrast: apart by volume ...
    for patient in (normal, bright):  # ... and both at the landmark level with landmarks
        assert np.allclose(medians["landmarks", patient], LANDMARK_LEVEL, atol=3), medians["landmarks", patient]
    assert volume_scales(table, method="landmarks")[normal].shape == (2, 3)


def test_runs_saved_before_the_intensity_knob_load_with_one_normalisation():
    saved = Config().to_dict()
    del saved["intensity"]  # a run from before per-volume scaling existed: it normalised the whole dataset at once
    assert Config.from_dict(saved).intensity == "dataset" and Config().intensity == "landmarks"


def test_brain_mask_leaves_out_a_bright_background(tmp_path):
    from helpers.data import brain_pixels, volume_scales

    root = write_synthetic_dataset(tmp_path, n_patients=1, n_slices=6, seed=6)
    table = load_dataset(root)
    before = volume_scales(table, method="brain")[table.patient[0]]
    inside = []
    for f in table.image_path:  # a scanner whose background is grey, not black
        image = cv2.imread(f)
        inside.append(image.sum(-1) > 0)
        image[image.sum(-1) == 0] = 30
        cv2.imwrite(str(f), image)
    pixels = np.stack([read_image(p) for p in table.image_path]).reshape(-1, 3)
    background = ~np.stack(inside).reshape(-1)
    assert brain_pixels(pixels)[background].mean() < 0.01
    after = volume_scales(table, method="brain")[table.patient[0]]
    assert np.allclose(after / before, 1, atol=0.1)  # the level is the brain's, not pulled down by background


def _break(root, how):
    """Damage one slice of a synthetic tree the way real downloads get damaged; returns the file named."""
    image = sorted(root.glob("*/*_2.tif"))[0]
    mask = image.with_name(image.stem + "_mask.tif")
    if how == "corrupt image":
        image.write_bytes(b"II*\x00" + b"\x00" * 40)  # a TIFF header and nothing behind it
        return image
    if how == "grayscale image":
        cv2.imwrite(str(image), cv2.imread(str(image), cv2.IMREAD_GRAYSCALE))
        return image
    if how == "truncated mask":
        mask.write_bytes(mask.read_bytes()[:100])
        return mask
    if how == "mask of another size":
        cv2.imwrite(str(mask), np.zeros((128, 128), np.uint8))
        return mask
    if how == "mask with label 1":
        cv2.imwrite(str(mask), (cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8))
        return mask
    raise AssertionError(how)


@pytest.mark.parametrize("how, message", [
    ("corrupt image", "cannot be read as an image"),
    ("grayscale image", "image mode L 256x256; expected a 3-channel 8-bit TIFF"),
    ("truncated mask", "cannot be read as a mask"),
    ("mask of another size", r"mask of shape \(128, 128\), its image is 256x256"),
    ("mask with label 1", r"mask values \[1\]; expected only 0 \(background\) and 255"),
])
def test_a_damaged_slice_is_a_clear_error_naming_the_file(tmp_path, how, message):
    root = write_synthetic_dataset(tmp_path, n_patients=2, n_slices=3, seed=0)
    damaged = _break(root, how)
    with pytest.raises(DataError, match=f"{damaged.name}: {message}"):
        load_dataset(root)


def test_stray_files_are_counted_and_skipped(tmp_path):
    root = write_synthetic_dataset(tmp_path, n_patients=2, n_slices=3, seed=0)
    folder = sorted(p for p in root.iterdir() if p.is_dir())[0]
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / "README.md").write_text("notes")
    (folder / f"{folder.name}_abc.tif").write_bytes(b"not a slice number")
    (root / "data.csv").write_text("Patient,RNASeqCluster\nTCGA_XX_0000,\n")  # the Kaggle companion, with gaps
    (root / "README.md").write_text("dataset notes")
    with pytest.warns(UserWarning, match="skipped 3 files in patient folders that are not slices"):
        table = load_dataset(root)
    assert len(table) == 6
