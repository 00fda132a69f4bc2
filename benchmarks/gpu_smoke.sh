#!/usr/bin/env bash
# The GPU code paths end to end on synthetic tiles, with their speed: `bench`, `train` at the GPU defaults (bf16),
# `evaluate`, `predict` (with and without TTA), `export`, the fp16 + loss-scaling path of a T4, `torch.compile`,
# the notebook run top to bottom as a plain script, one fold of the GPU protocol's command on a synthetic tree of
# the real dataset's size (110 patients, 36 slices each, 3 epochs: the fold's fixed costs and per-epoch time), and
# the test suite on a machine where CUDA is there. Each step has its own time limit; one log for all.
#
#   bash benchmarks/gpu_smoke.sh OUT_DIR            # every step; OUT_DIR gets all.log, JSON figures and summaries
#   bash benchmarks/gpu_smoke.sh OUT_DIR STEP...    # only these steps (evaluate, predict* and export need train_bf16)
#
# The steps run in the order below, most telling first, so a run cut short still has them. Needs the project's
# packages importable by $PYTHON (default python3); the tests step also needs pytest-xdist. About 10 minutes on one
# H200 (2026-12-04: 6 minutes through the protocol step, then 97 s for the tests; on 2026-11-30 the script without
# those two steps took about 6 minutes).
set -u
OUT=$(mkdir -p "${1:-runs/gpu_smoke}" && cd "${1:-runs/gpu_smoke}" && pwd)
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
exec > >(tee "$OUT/all.log") 2>&1

STEPS=" ${*:2} "
step() {  # step NAME SECONDS COMMAND...: run with a time limit, report its exit code and duration
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    [[ "$STEPS" == "  " || "$STEPS" == *" $name "* || $name == synth ]] || return 0
    echo "=== $name: $*"
    timeout "$limit" "$@"
    echo "=== $name: rc=$? in $((SECONDS - start)) s"
}

step env 30 bash -c "nvidia-smi -L; $PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())'"
step synth 60 $PY -m helpers synth --out "$WORK/syn" --patients 20 --slices 24
DATA=$WORK/syn/kaggle_3m
step train_bf16 180 $PY -m helpers train --data-dir "$DATA" --out "$WORK/run" --quiet
cp "$WORK/run/history.csv" "$OUT/history_gpu.csv" 2>/dev/null
step evaluate 60 $PY -m helpers evaluate --checkpoint "$WORK/run/best.pt" --data-dir "$DATA" \
    --report "$OUT/report_gpu.json"
step predict 90 $PY -m helpers predict --checkpoint "$WORK/run/best.pt" --input "$DATA" --out "$WORK/pred" \
    --no-tta --no-volume-view --quiet
cp "$WORK/pred/summary.csv" "$OUT/predict_summary.csv" 2>/dev/null
step predict_tta 90 $PY -m helpers predict --checkpoint "$WORK/run/best.pt" --input "$DATA" --out "$WORK/pred_tta" \
    --tta --no-volume-view --quiet
step predict_patient_view 90 $PY -m helpers predict --checkpoint "$WORK/run/best.pt" \
    --input "$(ls -d "$DATA"/*/ | head -1)" --out "$WORK/pred_one" --quiet
step export 120 $PY -m helpers export --checkpoint "$WORK/run/best.pt" --out "$WORK/export"
step protocol 420 bash -c "$PY -m helpers synth --out '$WORK/syn110' --patients 110 --slices 36 && \
    $PY benchmarks/patient_cv.py --data-dir '$WORK/syn110/kaggle_3m' --folds 5 --time-budget 0 --only-fold 0 \
    --out '$WORK/cv' --json '$OUT/protocol_fold0.json' -- --epochs 3 && cp '$WORK/cv/fold0/history.csv' \
    '$OUT/protocol_history.csv'"
# One thread per test process: 16 processes of 16 threads each crawl on 16 cores.
step tests 300 env OMP_NUM_THREADS=1 $PY -m pytest -q -n 16 -p no:cacheprovider -p no:benchmark tests
step notebook 240 $PY - <<'EOF'
import json
cells = json.load(open("BrainMRI_TumorSegmentation.ipynb"))["cells"]
code = "display = print\n" + "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
exec(compile(code, "BrainMRI_TumorSegmentation.ipynb", "exec"), {"__name__": "__main__"})
print("notebook: every code cell ran")
EOF
step bench 150 $PY -m helpers bench --steps 20 --json "$OUT/bench_gpu.json"
step bench_batch64 90 $PY -m helpers bench --steps 20 --batch-size 64 --no-seed-unet --json "$OUT/bench_gpu_b64.json"
step train_fp16 90 $PY -m helpers train --data-dir "$DATA" --out "$WORK/run16" --amp fp16 --epochs 8 --quiet
step train_compile 180 $PY -m helpers train --data-dir "$DATA" --out "$WORK/runc" --compile --epochs 4 --quiet
rm -rf "$WORK"
