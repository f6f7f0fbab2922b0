#!/usr/bin/env bash
# How the shipped tiny prior (piti_core/assets/prior-tiny) was made: one GPU, the toy world.
# Usage: OUT=<folder for the results> bash docs/prior/pretrain_gpu.sh [BASE_STEPS] [UP_STEPS] [MINUTES_PER_STAGE]
set -euo pipefail
export PYTHONUNBUFFERED=1 PITI_HOME=/tmp/piti-home
BASE_STEPS=${1:-4000}
UP_STEPS=${2:-3000}
MINUTES=${3:-3}
if [ -d .whl ]; then  # the GPU image lacks kornia: install the carried wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__)"
t0=$(date +%s)
piti data toyworld --out /tmp/tw --n ${TW_N:-6000} --size 64 --seed 0
t1=$(date +%s); echo "toyworld: $((t1 - t0)) s"
COMMON=(--device ${DEVICE:-cuda} --data /tmp/tw --out /tmp/prior --set train.batch_size=64 --set data.num_workers=${WORKERS:-12}
        --set train.save_every=100000 --set train.sample_every=100000 --set train.log_every=50 --no-preview
        --set train.stage_minutes="$MINUTES")
piti pretrain --stage prior-base --set train.pretrain_steps="$BASE_STEPS" "${COMMON[@]}"
t2=$(date +%s); echo "prior-base: $((t2 - t1)) s for $BASE_STEPS steps"
piti pretrain --stage prior-upsampler --resume --set train.pretrain_steps="$UP_STEPS" "${COMMON[@]}"
t3=$(date +%s); echo "prior-upsampler: $((t3 - t2)) s for $UP_STEPS steps"
mkdir -p "$OUT"
cp /tmp/prior/config.json /tmp/prior/run.json /tmp/prior/metrics.jsonl /tmp/prior/text_base.safetensors \
   /tmp/prior/text_upsampler.safetensors "$OUT"/
ls -la "$OUT"
