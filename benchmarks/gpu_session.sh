#!/usr/bin/env bash
# One GPU session's checks, in one command that fits a 10-minute device call (about 9 minutes of work).
#
# Prepare here (once): ../shared/tools/gpu-wheels.sh   (fetches lightly, pydicom, cleanlab, ... into .whl/)
# Then run it on the device with `.whl` carried:
#   bash benchmarks/gpu_session.sh
# Every figure is printed as it is measured and written under $OUT (or benchmarks/out/ without it):
#   pretrain.json, augment.json (step rates, compute bound, peak memory), quality.json (audit quality
#   on a multi-device export, per device, and Datalab beside it where `datasets` was carried:
#   ../shared/tools/gpu-wheels.sh datasets dill multiprocess xxhash), sites.json (cross-site
#   transfer), gauges.json (the gauge claim), and one log per benchmark. A benchmark that runs over its share of time is stopped; what it wrote so far stays.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/out}
mkdir -p "$out"
mkdir -p /tmp/site
if [ -d .whl ] && ! python3 -c 'import lightly, pydicom, cleanlab' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
# The checkout is the package `radaudit` (pyproject maps it onto the repository root); without an
# install, a link named radaudit makes it importable. The root stays on the path for `benchmarks._figures`.
if ! python3 -c 'import radaudit' 2>/dev/null; then
  ln -sfn "$PWD" /tmp/site/radaudit
fi
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt"
# The settings can be overridden for a dry run on a CPU, e.g.
#   PRETRAIN_ARGS="--probe-images 0" AUGMENT_ARGS="--device cpu --size 64 --workers 1 --batch 8 --images 32" \
#   QUALITY_ARGS="--n 150 --epochs 1 --methods simclr --size 32 --no-baseline" \
#   SITES_ARGS="--n 100 --epochs 1" GAUGES_ARGS="--n 100 --epochs 1 --seeds 0" bash benchmarks/gpu_session.sh
PRETRAIN_ARGS=${PRETRAIN_ARGS:---gpu}
AUGMENT_ARGS=${AUGMENT_ARGS:---device cuda --workers 16 --batch 256}
# One method at GPU scale, so the audit ends inside its share: 10,000 images of the five devices, 40
# epochs of SimCLR. (The real CR radiographs need pydicom-data, 34 MB, too big to carry: --real runs on the CPU.)
QUALITY_ARGS=${QUALITY_ARGS:---gpu --shards 16 --methods simclr --no-baseline --crop-ablation 0.875}
SITES_ARGS=${SITES_ARGS:---gpu --n 1500 --epochs 20}
GAUGES_ARGS=${GAUGES_ARGS:---gpu --n 1200 --epochs 15}
# Seconds per benchmark: step rates first (cheap, most wanted), then the audit, the sites, the gauges.
timeout 45 python3 benchmarks/pretrain.py $PRETRAIN_ARGS --json "$out/pretrain.json" 2>&1 | tee "$out/pretrain.log"
timeout 25 python3 benchmarks/augment.py $AUGMENT_ARGS --json "$out/augment.json" 2>&1 | tee "$out/augment.log"
timeout 250 python3 benchmarks/quality.py $QUALITY_ARGS --json "$out/quality.json" 2>&1 | tee "$out/quality.log"
timeout 110 python3 benchmarks/sites.py $SITES_ARGS --shards 16 --json "$out/sites.json" 2>&1 | tee "$out/sites.log"
timeout 110 python3 benchmarks/gauges.py $GAUGES_ARGS --shards 16 --json "$out/gauges.json" 2>&1 | tee "$out/gauges.log"
echo "gpu session done"
