"""Paired per-patient comparison of ``patient_cv.py`` runs, from the held-out reports they wrote.

Two runs on the same fold assignment (``--seed``) score the same patients, so their difference is best read
patient by patient: the mean of the paired differences, its standard error, and how many scores moved each
way. Pass ``BASE:NEW`` pairs (several assignments pool into one comparison), or bare run folders to just
summarise their held-out scores together:

    python benchmarks/compare_runs.py runs/bS0:runs/bEN80 runs/bS1:runs/bEN81 runs/bS2:runs/bEN82
    python benchmarks/compare_runs.py runs/bEN80 runs/bEN81 runs/bEN82 runs/bEN83
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

MOVED = 0.005  # a patient score "moved" when it changed by more than this


def fold_scores(run: Path) -> dict[str, dict[str, float]]:
    """fold folder name -> {patient: held-out Dice} for every finished fold of ``run``."""
    reports = sorted(run.glob("fold*/heldout.json"))
    if not reports:
        raise SystemExit(f"{run}: no fold*/heldout.json; pass the --out folder of a patient_cv.py run")
    return {report.parent.name: json.loads(report.read_text())["per_patient"] for report in reports}


def summary(scores: list[float]) -> str:
    return f"{statistics.mean(scores):.3f} mean / {statistics.median(scores):.3f} median"


def compare(pairs: list[tuple[Path, Path]]) -> None:
    """Print each pair's means over the patients both runs scored, then the pooled paired difference."""
    base_all, new_all, folds_up, folds = [], [], 0, 0
    for base_run, new_run in pairs:
        base, new = fold_scores(base_run), fold_scores(new_run)
        b, n = [], []
        for fold in sorted(set(base) & set(new)):
            patients = sorted(set(base[fold]) & set(new[fold]))
            if not patients:
                continue
            b_fold, n_fold = [base[fold][p] for p in patients], [new[fold][p] for p in patients]
            folds += 1
            folds_up += statistics.mean(n_fold) > statistics.mean(b_fold)
            b += b_fold
            n += n_fold
        if not b:
            raise SystemExit(f"{base_run} and {new_run} share no scored patient: not the same fold assignment?")
        print(f"{base_run} -> {new_run}: {len(b)} patients, {statistics.mean(b):.3f} -> {statistics.mean(n):.3f}")
        base_all += b
        new_all += n
    diffs = [n - b for b, n in zip(base_all, new_all)]
    spread = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    print(f"{len(diffs)} paired scores: {summary(new_all)} against {summary(base_all)}; "
          f"paired {statistics.mean(diffs):+.4f} (standard error {spread:.4f}), "
          f"{sum(d > MOVED for d in diffs)} up and {sum(d < -MOVED for d in diffs)} down by more than {MOVED}, "
          f"{folds_up} of {folds} folds up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="BASE:NEW pairs of patient_cv.py --out folders, or bare folders")
    args = parser.parse_args()
    pairs = [tuple(Path(part) for part in run.split(":", 1)) for run in args.runs if ":" in run]
    single = [Path(run) for run in args.runs if ":" not in run]
    if pairs and single:
        raise SystemExit("pass either BASE:NEW pairs or bare run folders, not both")
    if pairs:
        compare(pairs)
        return
    per_run = {run: [s for fold in fold_scores(run).values() for s in fold.values()] for run in single}
    for run, scores in per_run.items():
        print(f"{run}: {summary(scores)}")
    pooled = [s for scores in per_run.values() for s in scores]
    print(f"{len(pooled)} held-out scores: {summary(pooled)}")


if __name__ == "__main__":
    main()
