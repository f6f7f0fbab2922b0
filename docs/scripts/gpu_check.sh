#!/usr/bin/env bash
# The GPU checks of docs/performance.md ("On a GPU"), as one script with a time limit per part, so that a
# lent GPU machine's short lease yields every part that finished. Each part writes under $OUT (default
# ./gpu-out): JSON results and a log per part.
#
#   OUT=/tmp/gpu bash docs/scripts/gpu_check.sh            # on a CUDA machine, from the repository root
#   DEVICE=cpu PRESET=tiny BATCH=2 bash docs/scripts/gpu_check.sh   # rehearsal on the CPU
#
# Parts: (1) bench --compare eager: stage2/stage1/checkpointing/bf16 + sampling; (2) bench --compare with
# torch.compile in bf16 (the GPU configuration) against eager bf16; (3) the memory preflight against the
# measured CUDA allocator peak; (4) a short `piti train` on the toy world and `piti sample --compile`.
# BUNDLE=FILE.tar.gz also packs $OUT into one archive after every part.
set -u
OUT=${OUT:-gpu-out}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-glide}
BATCH=${BATCH:-8}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
T_EAGER=${T_EAGER:-110}
T_COMPILE=${T_COMPILE:-200}
T_PREFLIGHT=${T_PREFLIGHT:-60}
T_TRAIN=${T_TRAIN:-110}
T_SAMPLE=${T_SAMPLE:-90}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record rc and seconds
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$OUT/parts.txt"
  tail -n 25 "$OUT/$name.log"
  if [ -n "${BUNDLE:-}" ]; then  # one archive of $OUT after every part (for a machine that returns few files)
    tar czf "$BUNDLE.tmp" -C "$OUT" . && mv "$BUNDLE.tmp" "$BUNDLE"
  fi
}

"$PY" - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", "sm", p.multi_processor_count,
          "bf16", torch.cuda.is_bf16_supported())
EOF

part eager "$T_EAGER" "$PY" -m piti_cli.main bench --compare --device "$DEVICE" --preset "$PRESET" \
  --batch-size "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --variants stage2,stage1,checkpointing,bf16 \
  --json-file "$OUT/compare-eager.json" --overwrite

part compiled "$T_COMPILE" "$PY" -m piti_cli.main bench --compare --device "$DEVICE" --preset "$PRESET" \
  --batch-size "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --variants bf16,compiled-bf16 \
  --json-file "$OUT/compare-compiled.json" --overwrite

part preflight "$T_PREFLIGHT" bash -c "'$PY' docs/scripts/preflight_check.py --device '$DEVICE' --preset '$PRESET' \
  --stage stage2 --batch-size '$BATCH' --json > '$OUT/preflight-stage2.json' && '$PY' docs/scripts/preflight_check.py \
  --device '$DEVICE' --preset '$PRESET' --stage stage1 --batch-size '$BATCH' --json > '$OUT/preflight-stage1.json'"

RUN=$(mktemp -d)/run
export PITI_HOME=${PITI_HOME:-$(mktemp -d)}
part train "$T_TRAIN" "$PY" -m piti_cli.main train --task sketch --device "$DEVICE" --no-preview --out "$RUN" \
  --set train.stage1_steps=40 --set train.stage1_cont_steps=0 --set train.stage2_steps=40 \
  --set train.upsampler_steps=40
part sample "$T_SAMPLE" "$PY" -m piti_cli.main sample --run "$RUN" --input docs/sketch/astronaut_sketch.png \
  --device "$DEVICE" --compile --out "$OUT/sample" --json
cat "$OUT/parts.txt"
