#!/usr/bin/env bash
# The one prepared command for a GPU machine: environment report, the GPU test tier (tests/gpu), then the throughput
# bench (bench/gpu_throughput.py). See docs/gpu.md.
#
#   bash bench/gpu_check.sh                                   # from anywhere; logs go to $OUT (default runs/gpu-check)
#   srun --gpus=1 --time=00:15:00 bash bench/gpu_check.sh     # on Slurm
#
# Needs python3 with a CUDA torch, transformers, numpy, safetensors, einops, psutil, pytest and pytest-timeout.
# megatron-core comes from the wheels in .whl/ when that folder exists (setuptools from .whl/if-missing/ only when
# python3 lacks it): installed into $SITE without network or dependencies, first on PYTHONPATH, then the repo
# itself. Without .whl/ the environment's megatron-core is used. The bench runs even when tests fail; the exit
# status is non-zero if either failed.
# Expected about 2-3 minutes on an H100; hard limits (tests 210 s, bench 150 s) keep the whole under 7 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false NCCL_DEBUG=${NCCL_DEBUG:-WARN}
PY=${PY:-python3}
OUT=${OUT:-$PWD/runs/gpu-check}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT"

if compgen -G ".whl/*.whl" > /dev/null; then
    wheels=(.whl/*.whl)
    # megatron-core's DDP imports torch.utils.cpp_extension, which imports setuptools; Python 3.12 environments may
    # lack it (torch declares it there, but not every install pulls it). Only then add the carried one.
    if ! "$PY" -c "import setuptools" 2> /dev/null && compgen -G ".whl/if-missing/setuptools-*.whl" > /dev/null; then
        wheels+=(.whl/if-missing/setuptools-*.whl)
    fi
    echo "installing into $SITE: ${wheels[*]}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "${wheels[@]}" || { echo "gpu_check: installing the carried wheels failed"; exit 1; }
    export PYTHONPATH="$SITE:$PWD"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

{
    date -u
    nvidia-smi || echo "nvidia-smi: not available"
    "$PY" - <<'EOF'
import importlib.util, platform, sys
import torch
print(f"python {platform.python_version()}; torch {torch.__version__} (CUDA {torch.version.cuda})")
if not torch.cuda.is_available():
    sys.exit(3)
major, minor = torch.cuda.get_device_capability()
print(f"cuda: {torch.cuda.device_count()} x {torch.cuda.get_device_name()} (sm_{major}{minor}), "
      f"nccl {torch.cuda.nccl.version()}, bf16 {torch.cuda.is_bf16_supported()}")
print("transformer_engine importable:", importlib.util.find_spec("transformer_engine") is not None)
import transformers
from megatron.core import package_info
print(f"transformers {transformers.__version__}; megatron-core {package_info.__version__} ({package_info.__file__})")
import tests  # the repo's namespace package; a regular `tests` package installed elsewhere would shadow it
print("tests package:", list(tests.__path__))
EOF
} 2>&1 | tee "$OUT/env.log"
env_rc=${PIPESTATUS[0]}
# Only a missing GPU stops here: any other problem shows up, in detail, in the tests below.
[ "$env_rc" -ne 3 ] || { echo "gpu_check: torch sees no CUDA device; the GPU tier would only skip"; exit 3; }

echo "== tests/gpu"
timeout -k 10 210 "$PY" -m pytest tests/gpu -v -p no:cacheprovider --disable-warnings --timeout 90 \
    --junitxml "$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== bench/gpu_throughput.py"
timeout -k 10 150 "$PY" bench/gpu_throughput.py --json "$OUT/gpu_throughput.json" 2>&1 | tee "$OUT/gpu_throughput.log"
bench_rc=${PIPESTATUS[0]}

echo "gpu_check: tests exit $tests_rc, throughput bench exit $bench_rc; logs in $OUT"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
