"""Re-score the fold checkpoints of ``patient_cv.py`` runs under a grid of inference settings (post hoc).

Training is not repeated: each fold's checkpoint is run once over the patients that fold held out (as
``evaluate`` runs it, flip TTA as the checkpoint says), and the probability maps are then thresholded and
cleaned (:func:`helpers.inference.clean_volume`) under every combination of ``threshold``, ``grow_threshold``
and ``min_volume_share``. Prints the best settings by mean per-patient Dice over all runs' held-out patients, each
against the checkpoints' own settings, paired per patient. Choosing on these patients and reporting on them is
optimistic; check a choice on runs that did not pick it.

    python benchmarks/inference_sweep.py runs/bEN80 runs/bEN81 runs/bEN82 \
        --data-dir ../shared/data/lgg-sample/kaggle_3m
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from helpers.checkpoint import load_checkpoint  # noqa: E402
from helpers.data import load_dataset  # noqa: E402
from helpers.inference import clean_volume, make_eval_loader, patient_volumes  # noqa: E402
from helpers.metrics import dice  # noqa: E402

KNOBS = ("threshold", "grow_threshold", "min_volume_share")


def held_out_volumes(run: Path, table, checkpoint: str):
    """(fold config, patient, probabilities, masks) for every held-out patient of every fold of ``run``."""
    folds = sorted(run.glob("fold*/heldout.json"))
    if not folds:
        raise SystemExit(f"{run}: no fold*/heldout.json; pass the --out folder of a finished patient_cv.py run")
    for report in folds:
        patients = list(json.loads(report.read_text())["per_patient"])
        held = table[table["patient"].isin(patients)].reset_index(drop=True)
        model, cfg, _ = load_checkpoint(report.parent / f"{checkpoint}.pt")
        for patient, probs, masks, _ in patient_volumes(model, make_eval_loader(held, cfg), cfg):
            yield cfg, f"{run.name}:{patient}", probs.cpu().numpy(), masks.cpu().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="patient_cv.py --out folders")
    parser.add_argument("--data-dir", required=True, help="the labelled kaggle_3m tree the runs were scored on")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--threshold", default="0.3,0.4,0.5,0.6")
    parser.add_argument("--grow-threshold", default="0,0.1,0.2,0.3")
    parser.add_argument("--min-volume-share", default="0,0.1,0.2,0.3")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()

    grid = [dict(zip(KNOBS, values)) for values in itertools.product(
        *([float(v) for v in getattr(args, knob).split(",")] for knob in KNOBS))]
    table = load_dataset(args.data_dir)
    own: dict[str, float] = {}
    scores: list[dict[str, float]] = [{} for _ in grid]
    for run in args.runs:
        for cfg, key, probs, masks in held_out_volumes(run, table, args.checkpoint):
            own[key] = dice(clean_volume(probs, cfg), masks)
            for setting, out in zip(grid, scores):
                out[key] = dice(clean_volume(probs, dataclasses.replace(cfg, **setting)), masks)
        print(f"{run}: scored", flush=True)

    keys = list(own)
    base = np.array([own[k] for k in keys])
    rows = []
    for setting, out in zip(grid, scores):
        values = np.array([out[k] for k in keys])
        diff = values - base
        rows.append((values.mean(), np.median(values), diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff)),
                     int((diff > 0.005).sum()), int((diff < -0.005).sum()), setting))
    print(f"\n{len(keys)} held-out patients; the checkpoints' own settings: mean {base.mean():.4f}, "
          f"median {np.median(base):.4f}")
    print(f"{'mean':>6} {'median':>6} {'paired':>7} {'SE':>6} {'up':>3} {'down':>4}  setting")
    for mean, median, gain, se, up, down, setting in sorted(rows, key=lambda r: -r[0])[:args.top]:
        print(f"{mean:6.4f} {median:6.4f} {gain:+7.4f} {se:6.4f} {up:3d} {down:4d}  "
              + ", ".join(f"{k}={v:g}" for k, v in setting.items()))


if __name__ == "__main__":
    main()
