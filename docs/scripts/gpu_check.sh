#!/usr/bin/env bash
# The GPU checks of docs/performance.md ("On a GPU"), as one script with a time limit per part, so that a
# lent GPU machine's short lease yields every part that finished. Each part writes under $OUT (default
# ./gpu-out): JSON results and a log per part.
#
#   OUT=/tmp/gpu bash docs/scripts/gpu_check.sh            # on a CUDA machine, from the repository root
#   DEVICE=cpu PRESET=tiny BATCH=2 bash docs/scripts/gpu_check.sh   # rehearsal on the CPU
#
# Parts (PARTS="eager compiled large preflight train sample" by default; sample-compiled when named):
# eager = bench --compare stage2/stage1/checkpointing/bf16 + sampling; sample-compiled = sampling steps
# only (--no-train), eager fp32 / bf16 against compiled bf16 (CUDA graphs); compiled = bench --compare
# with torch.compile in bf16 (the GPU configuration) against eager bf16 (training steps, and sampling
# unless sample-compiled ran); large = stage2 vs bf16 at LARGE_BATCH; preflight = the memory preflight
# against the measured CUDA allocator peak; train + sample = a short `piti train` on the toy world and
# `piti sample --compile`.
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
T_SAMPLE_COMPILE=${T_SAMPLE_COMPILE:-220}
T_PREFLIGHT=${T_PREFLIGHT:-60}
T_TRAIN=${T_TRAIN:-110}
T_SAMPLE=${T_SAMPLE:-90}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
PARTS=${PARTS:-eager compiled large preflight train sample}
LARGE_BATCH=${LARGE_BATCH:-32}
T_LARGE=${T_LARGE:-60}
PREFLIGHT_PRESET=${PREFLIGHT_PRESET:-tiny}  # a glide dry-run alone takes minutes of CPU
PREFLIGHT_BATCH=${PREFLIGHT_BATCH:-64}
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record rc and seconds
  local name=$1 limit=$2; shift 2
  case " $PARTS " in *" $name "*) ;; *) return 0 ;; esac
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$OUT/parts.txt"
  tail -n 25 "$OUT/$name.log"
  if [ -n "${BUNDLE:-}" ]; then  # one archive of $OUT after every part (for a machine that returns few files)
    tar czf "$BUNDLE.tmp" --exclude="$(basename "$BUNDLE")*" -C "$OUT" . && mv "$BUNDLE.tmp" "$BUNDLE"
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

part sample-compiled "$T_SAMPLE_COMPILE" "$PY" -m piti_cli.main bench --compare --device "$DEVICE" \
  --preset "$PRESET" --steps "$STEPS" --warmup "$WARMUP" --variants bf16,compiled-bf16 --no-train \
  --json-file "$OUT/compare-sample-compiled.json" --overwrite

case " $PARTS " in *" sample-compiled "*) NO_SAMPLE=--no-sample ;; *) NO_SAMPLE= ;; esac
part compiled "$T_COMPILE" "$PY" -m piti_cli.main bench --compare --device "$DEVICE" --preset "$PRESET" \
  --batch-size "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --variants bf16,compiled-bf16 $NO_SAMPLE \
  --json-file "$OUT/compare-compiled.json" --overwrite

part large "$T_LARGE" "$PY" -m piti_cli.main bench --compare --device "$DEVICE" --preset "$PRESET" \
  --batch-size "$LARGE_BATCH" --steps "$STEPS" --warmup "$WARMUP" --variants stage2,bf16 --no-sample \
  --json-file "$OUT/compare-large.json" --overwrite

part preflight "$T_PREFLIGHT" bash -c "for s in stage1 stage2 upsampler; do '$PY' docs/scripts/preflight_check.py \
  --device '$DEVICE' --preset '$PREFLIGHT_PRESET' --stage \$s --batch-size '$PREFLIGHT_BATCH' --json \
  > '$OUT/preflight-'\$s.json || exit 1; done"

RUN=$(mktemp -d)/run
export PITI_HOME=${PITI_HOME:-$(mktemp -d)}
part train "$T_TRAIN" "$PY" -m piti_cli.main train --task sketch --device "$DEVICE" --no-preview --out "$RUN" \
  --set train.stage1_steps=40 --set train.stage1_cont_steps=0 --set train.stage2_steps=40 \
  --set train.upsampler_steps=40
part sample "$T_SAMPLE" "$PY" -m piti_cli.main sample --run "$RUN" --input docs/sketch/astronaut_sketch.png \
  --device "$DEVICE" --compile --out "$OUT/sample" --json
cat "$OUT/parts.txt"
