#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md in one command, for a session that has a GPU for a short time.
#
#   bash benchmarks/gpu_session.sh LOG_DIR [PART ...]
#
# PART, in the order of the minutes they took on an H100 (2026-11-24):
#   checks       tests/test_cuda.py: presets through the CLI, a sync-free epoch (about 2.5 min)
#   augment      benchmarks/augment.py (about 1 min)
#   train        benchmarks/train_throughput.py (about 1 min)
#   inference    benchmarks/inference.py (about 1 min)
#   isbi         the demo's GPU recipe, then the ISBI challenge metrics on slices 25-29 (about 2 min)
#   camvid       benchmarks/camvid.py, DeepLabV3-R50 (200 s per side, about 8 min)
#   camvid-unet  the same with the U-Net (about 8 min)
#   huge         benchmarks/huge_tiff.py, a 20000 x 20000 TIFF
#   plan         benchmarks/plan.py isbi folds ema at 60 s per side (about 9 min, with the ISBI
#                Rand error of the 5-fold ensemble; the issue's target is <= 0.015)
# Without PARTs: checks augment train inference isbi.
#
# It runs from the source tree (PYTHONPATH=src) with whatever torch the machine has, so a GPU
# image's own CUDA build works even when it is not the version pinned for CPU installs. CamVid is
# read from device_data/camvid (git-ignored): copy ../shared/data/camvid there first, because
# ../shared does not travel to a lent machine.
set -u
cd "$(dirname "$0")/.."
LOG_DIR=${1:?give a folder for the logs}
shift
PARTS=${*:-checks augment train inference isbi}
mkdir -p "$LOG_DIR"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
PY=${PYTHON:-python3}

$PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: these measurements need a GPU')" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOG_DIR/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$LOG_DIR/gpu.txt"

run() {  # run NAME COMMAND...: output to the screen and to LOG_DIR/NAME.log, with the wall time
    local name=$1 start=$SECONDS
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$LOG_DIR/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}, $((SECONDS - start)) s"
}

isbi() {  # the demo trains on slices 00-24; score 25-29 with the challenge's metrics as well
    local held=$LOG_DIR/held_out run_dir=$LOG_DIR/isbi-demo
    mkdir -p "$held/images" "$held/masks"
    for i in 25 26 27 28 29; do
        cp "data/isbi2012/train/images/$i.png" "$held/images/"
        cp "data/isbi2012/train/masks/$i.png" "$held/masks/"
    done
    $PY -m seglab demo --device cuda --out "$run_dir" --no-progress &&
        $PY -m seglab evaluate -m "$run_dir/last.pt" "$held" --instances --tta flips --device cuda
}

for part in $PARTS; do
    case $part in
        checks) run checks $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py ;;
        augment) run augment $PY benchmarks/augment.py ;;
        train) run train $PY benchmarks/train_throughput.py ;;
        inference) run inference $PY benchmarks/inference.py ;;
        isbi) run isbi isbi ;;
        camvid) run camvid $PY benchmarks/camvid.py --data device_data/camvid ;;
        camvid-unet) run camvid-unet $PY benchmarks/camvid.py --data device_data/camvid --model unet ;;
        huge) run huge $PY benchmarks/huge_tiff.py ;;
        plan) run plan $PY benchmarks/plan.py isbi folds ema --device cuda --budget 60 --out "$LOG_DIR/plan" ;;
        *) echo "unknown part '$part': use checks augment train inference isbi camvid camvid-unet huge plan" >&2
           exit 2 ;;
    esac
done
