#!/usr/bin/env bash
# train -> sample -> evaluate on a folder of your own NIfTI scans, with the medddpm command.
#
#   examples/quickstart.sh DATA_DIR [WORK_DIR]
#
# Settings through the environment (defaults in brackets):
#   CONFIG     preset or YAML file to train                  [brain-mri-64]
#   MAX_STEPS  optimizer steps (empty: the config's)          []
#   NUM        synthetic volumes to draw                      [16]
#   REAL_DIR   real scans to compare against, ideally ones    [DATA_DIR]
#              held out from training
#   DEVICE     auto, cpu or cuda                              [auto]
#
# A CPU smoke run on 16³ volumes: CONFIG=tiny MAX_STEPS=20 NUM=4 examples/quickstart.sh scans/ /tmp/qs
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 DATA_DIR [WORK_DIR]" >&2
    exit 2
fi
DATA_DIR=$1
WORK_DIR=${2:-medddpm-quickstart}
CONFIG=${CONFIG:-brain-mri-64}
NUM=${NUM:-16}
REAL_DIR=${REAL_DIR:-$DATA_DIR}
DEVICE=${DEVICE:-auto}
MEDDDPM=${MEDDDPM:-medddpm}

# 1. What is in the folder: shape, voxel size, orientation and intensity range of every scan.
"$MEDDDPM" info "$DATA_DIR"

# 2. Train. Add --resume to continue an interrupted run; --dry-run shows the plan and memory estimate.
"$MEDDDPM" train "$DATA_DIR" --output "$WORK_DIR/run" --config "$CONFIG" --device "$DEVICE" \
    ${MAX_STEPS:+--max-steps "$MAX_STEPS"}

# 3. Sample with the config's fast sampler (DPM-Solver++ by default) from the EMA weights.
"$MEDDDPM" sample "$WORK_DIR/run" --output "$WORK_DIR/samples" --num "$NUM" --device "$DEVICE"

# 4. Evaluate: both sets go through the run's preprocessing, so they are compared like for like.
"$MEDDDPM" evaluate "$REAL_DIR" "$WORK_DIR/samples" --output "$WORK_DIR/report" --run "$WORK_DIR/run" \
    --device "$DEVICE"

echo "Report:  $WORK_DIR/report/report.html"
echo "Samples: $WORK_DIR/samples (preview.png shows their mid-slices)"
