"""Patient-level k-fold cross-validation of ``python -m helpers train`` + ``evaluate`` on a labelled kaggle_3m tree.

For each of k patient folds (StratifiedGroupKFold by institution): link the other patients into a temporary
kaggle_3m folder and run exactly ``python -m helpers train --data-dir TRAIN --out RUN --time-budget T --seed S``
(it makes its own validation split inside them), then ``python -m helpers evaluate`` on the held-out patients.
Prints per-fold and overall mean and median per-patient Dice and writes everything to a JSON file.

CPU protocol (2 cores, 480 s of training per fold) on the 15-patient sample:

    python benchmarks/patient_cv.py --data-dir ../shared/data/lgg-sample/kaggle_3m --folds 5 --time-budget 480

GPU protocol (the seed U-Net at 256x256, the GPU defaults, no time limit) on all 110 patients:

    python benchmarks/patient_cv.py --data-dir /kaggle/input/lgg-mri-segmentation/kaggle_3m --folds 5 \
        --time-budget 0 --out runs/gpu_cv
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from helpers.data import load_dataset, patient_folds  # noqa: E402

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the children's lines appear as they happen


def _link_patients(patients: list[str], source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for patient in patients:
        (target / patient).symlink_to(source / patient, target_is_directory=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--time-budget", type=float, default=480, help="seconds per fold; 0 = no limit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only-fold", type=int, help="run just this fold (a quicker development signal)")
    parser.add_argument("--out", default="runs/patient_cv")
    parser.add_argument("--json", default=None, help="default: OUT/results.json")
    parser.add_argument("train_args", nargs="*", help="extra flags for 'train', after --")
    args = parser.parse_args()

    table = load_dataset(args.data_dir)
    source = Path(table["image_path"].iloc[0]).resolve().parent.parent
    out = Path(args.out)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (train, held_out) in enumerate(patient_folds(table, args.folds, args.seed)):
            if args.only_fold is not None and k != args.only_fold:
                continue
            train_dir = _link_patients(sorted(train["patient"].unique()), source, Path(tmp) / f"train{k}" / "kaggle_3m")
            test_dir = _link_patients(sorted(held_out["patient"].unique()), source,
                                      Path(tmp) / f"test{k}" / "kaggle_3m")
            run = out / f"fold{k}"
            start = time.perf_counter()
            budget = ["--time-budget", str(args.time_budget)] if args.time_budget > 0 else []
            subprocess.run([sys.executable, "-m", "helpers", "train", "--data-dir", str(train_dir), "--out", str(run),
                            *budget, "--seed", str(args.seed), "--quiet", *args.train_args],
                           cwd=REPO, check=True, env=ENV)
            seconds = time.perf_counter() - start
            report = run / "heldout.json"
            subprocess.run([sys.executable, "-m", "helpers", "evaluate", "--checkpoint", str(run / "best.pt"),
                            "--data-dir", str(test_dir), "--report", str(report)], cwd=REPO, check=True, env=ENV)
            scores = json.loads(report.read_text())
            results.append({"fold": k, "train_seconds": seconds, **scores})

    per_patient = {p: d for r in results for p, d in r["per_patient"].items()}
    values = np.array(list(per_patient.values()))
    summary = {"protocol": vars(args), "folds": results, "n_patients": len(per_patient),
               "mean_patient_dice": float(values.mean()), "median_patient_dice": float(np.median(values))}
    print(f"\n{'fold':>4} {'patients':>8} {'mean Dice':>9} {'median':>7} {'train s':>8}")
    for r in results:
        print(f"{r['fold']:>4} {r['n_patients']:>8} {r['mean_patient_dice']:>9.3f} {r['median_patient_dice']:>7.3f} "
              f"{r['train_seconds']:>8.0f}")
    mean, median = summary["mean_patient_dice"], summary["median_patient_dice"]
    print(f"{'all':>4} {len(per_patient):>8} {mean:>9.3f} {median:>7.3f}")
    path = Path(args.json or out / "results.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
