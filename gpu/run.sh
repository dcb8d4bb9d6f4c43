#!/usr/bin/env bash
# The whole judgement on a host that has a CUDA torch but not our virtual environment (a lent GPU machine).
# Usage, from the repository root, with gpu/pack.sh's folder .gpu/ beside it (docs/gpu-run.md):
#   bash gpu/run.sh [PHASE...]   # results: $OUT/gpu-run.tar.gz (or ./gpu-out/ when OUT is unset)
# Phases, run in this order whatever order they are named in (default: all four):
#   repro  the fp32 defaults on every device of params.yaml, and the report (dvc repro)
#   bench  make bench's measurements on cuda (on cpu where no GPU is visible)
#   bf16   the defaults under bf16 autocast, on cuda only where a GPU is visible (the CPU's bf16 runs in CI), 1 repeat
#   compile  torch_mse, numpy_mse and numpy_mse_op under torch.compile, likewise (on cuda it needs triton)
# On a lease, two calls on the warm machine: `bash gpu/run.sh repro bench`, then `bash gpu/run.sh bf16 compile`
# (one 10-minute call cannot hold them all: the sizes measured, and the limits, are in docs/gpu-run.md).
# Settings (environment): PYTHON (default python3), REPRO_TIMEOUT (360 s), BENCH_TIMEOUT (120 s), BF16_TIMEOUT (240 s),
# COMPILE_TIMEOUT (300 s), BENCH_DEVICE.
# Exit status: 0 when every phase asked for ran and the fp32 report passed; else the first failing phase's status
# (4: this host cannot run it at all).
# Each phase has its own time limit; a phase that fails or runs out is recorded and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-out}
PACK=${LOSSBENCH_GPU_PACK:-$ROOT/.gpu}
LOG=$ROOT/gpu-log
mkdir -p "$OUT" "$LOG"
T0=$(date +%s)
phase() { echo "== $(($(date +%s) - T0)) s: $*" | tee -a "$LOG/phases.txt"; }
PHASES=" ${*:-repro bench bf16 compile} "
for p in $PHASES; do
    case $p in repro|bench|bf16|compile) ;; *) echo "gpu/run.sh: unknown phase '$p': expected repro, bench, bf16 or compile" >&2; exit 2;; esac
done
asked() { [[ $PHASES == *" $1 "* ]]; }

# What the host's python lacks comes from the carried wheels (gpu/pack.sh); a package the host has is kept,
# and torch, torchvision and numpy never travel (pinned ones would shadow the host's CUDA build).
PY=${PYTHON:-python3}
MISSING=$("$PY" - "$PACK"/wheels/*.whl <<'PYEOF'
import sys
from importlib import metadata
for path in sys.argv[1:]:
    name = path.rsplit("/", 1)[-1].split("-")[0]
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        print(path)
PYEOF
) || { echo "gpu/run.sh: $PY cannot run" >&2; exit 4; }
if [ -n "$MISSING" ]; then
    SITE=$(mktemp -d)
    phase "install $(echo "$MISSING" | wc -l) carried wheels the host lacks"
    # shellcheck disable=SC2086  # one path a line, no spaces (wheel names)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" $MISSING \
        > "$LOG/install.txt" 2>&1 || { cat "$LOG/install.txt"; exit 4; }
    echo "$MISSING" | sed 's|.*/||' >> "$LOG/install.txt"
    export PYTHONPATH="$SITE"${PYTHONPATH:+:$PYTHONPATH}
    export PATH="$SITE"/bin:$PATH
fi
# dvc.yaml's commands call `python`: the host's may be named python3 only. A wrapper, not a link: a link to a
# virtual environment's python outside its bin/ loses the environment.
BIN=$(mktemp -d)  # fresh: never write through a link left by an earlier run
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v "$PY")" > "$BIN/python" && chmod +x "$BIN/python"
export PATH=$BIN:$(dirname "$(command -v "$PY")"):$PATH
export MNIST_MIRROR=${MNIST_MIRROR:-$PACK/mnist}
export CUBLAS_WORKSPACE_CONFIG=:4096:8 PYTHONHASHSEED=0 PYTHONUNBUFFERED=1

# DVC wants a Git repository; the copied working tree may have none.
if ! git rev-parse --git-dir >/dev/null 2>&1; then
    git init -q && git add -A && git -c user.name=lossbench -c user.email=lossbench@gpu.invalid commit -qm tree \
        || { echo "gpu/run.sh: could not make a Git repository here" >&2; exit 4; }
fi

phase "host"
{
    date -u +%FT%TZ; uname -a; nvidia-smi 2>&1 | head -15
    "$PY" -c "import sys, torch, numpy; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'); \
print('numpy', numpy.__version__)"
    dvc --version
    nproc
} > "$LOG/host.txt" 2>&1
cat "$LOG/host.txt"
python -m lossbench.gpu 2>&1 | tee "$LOG/gpu-diagnosis.txt"

# `make repro`'s command (log: $1, limit: $2 s). The warm process (lossbench.warm) has not run on a GPU yet, so a
# stage other than the report that fails gets one more try in what is left of the limit, each stage importing torch
# itself (DVC re-runs only the stages that did not finish); a report that fails has judged, and is not run again.
run_repro() {
    local start rc left
    start=$(date +%s)
    timeout "$2" python -m lossbench.workflow repro > "$1" 2>&1
    rc=$?
    left=$(( $2 - ($(date +%s) - start) ))
    if [ "$rc" -ne 0 ] && [ "${LOSSBENCH_WARM:-1}" != 0 ] && [ "$left" -gt 10 ] \
            && grep "failed to reproduce" "$1" | grep -vq ":report'"; then
        phase "a stage failed (exit $rc): make repro again with LOSSBENCH_WARM=0, $left s left"
        python -m lossbench.warm --stop 2>/dev/null
        echo "== again with LOSSBENCH_WARM=0" >> "$1"
        LOSSBENCH_WARM=0 timeout "$left" python -m lossbench.workflow repro >> "$1" 2>&1
        rc=$?
    fi
    return "$rc"
}

# the GPU host is a machine of its own: its results land in results/$LOSSBENCH_MACHINE/
export LOSSBENCH_MACHINE=${LOSSBENCH_MACHINE:-gpu}
# the warm process, off by default where a GPU is visible (untried there): this run tries it, run_repro falls back
export LOSSBENCH_WARM=${LOSSBENCH_WARM:-1}
REPRO_RC=0
if asked repro; then
    phase "make repro: the fp32 defaults on every device of params.yaml, the report, the overview (machine $LOSSBENCH_MACHINE)"
    run_repro "$LOG/repro.txt" "${REPRO_TIMEOUT:-360}"
    REPRO_RC=$?
    echo "exit $REPRO_RC" >> "$LOG/repro.txt"; grep -vE 'it/s|s/it' "$LOG/repro.txt" | tail -4
    cp -r "results/$LOSSBENCH_MACHINE/report" "$LOG/report-fp32" 2>/dev/null  # kept as it was: bf16 rewrites it
fi

# make bench's measurements, on cuda where a GPU is visible (the CPU form of this script, in CI, benches cpu).
if asked bench || asked bf16 || asked compile; then  # one more torch import: only for the phases that need the device
    GPU=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
fi
BENCH_RC=0
if asked bench; then
    BENCH_DEVICE=${BENCH_DEVICE:-$GPU}
    phase "bench on $BENCH_DEVICE"
    timeout "${BENCH_TIMEOUT:-120}" python -m lossbench.bench --params params.yaml --data data --device "$BENCH_DEVICE" \
        > "$LOG/bench.txt" 2>&1
    BENCH_RC=$?
    echo "exit $BENCH_RC" >> "$LOG/bench.txt"; cat "$LOG/bench.txt"
fi

# bf16 and compile (issue 17), each in this copy's params only: on the GPU's device (cpu in the CPU form), 1 repeat.
# A report fails where a loss cannot run under the setting (numpy_mse under bf16: a finding), so its status is
# logged, not returned; the fp32 report is kept apart (gpu-log/report-fp32/), as each setting's (report-<setting>/).
setting() {  # the setting's name, its time limit, what it changes in params.yaml's train section (a Python dict)
    phase "$1: train.update($3), train.devices [$GPU], train.repeats 1"
    GPU=$GPU CHANGES=$3 python - <<'PYEOF'
import ast
import os
import yaml
p = yaml.safe_load(open("params.yaml"))
p["train"].update(ast.literal_eval(os.environ["CHANGES"]), devices=[os.environ["GPU"]], repeats=1)
open("params.yaml", "w").write(yaml.safe_dump(p, sort_keys=False))
PYEOF
    run_repro "$LOG/$1.txt" "$2"
    echo "exit $? (1: the report names what cannot run under $1)" >> "$LOG/$1.txt"
    grep -vE 'it/s|s/it' "$LOG/$1.txt" | tail -4
    cp -r "results/$LOSSBENCH_MACHINE/report" "$LOG/report-$1" 2>/dev/null
    git checkout -q -- params.yaml
}
asked bf16 && setting bf16 "${BF16_TIMEOUT:-240}" "{'precisions': ['bf16']}"
# compiled: the reference, the tutorial's NumPy loss (traced into torch ops) and its custom op (NumPy runs)
asked compile && setting compile "${COMPILE_TIMEOUT:-300}" \
    "{'modes': ['compiled'], 'losses': ['torch_mse', 'numpy_mse', 'numpy_mse_op']}"

phase "pack"
python -m lossbench.warm --stop 2>/dev/null  # the warm process this run asked for ends with it
# one archive; in parts of 15 MiB where it is larger (the device tool returns 8 files of at most 16 MiB):
# cat gpu-run.tar.gz.* | tar xz
tar czf "$OUT/gpu-run.tar.gz" gpu-log reports "results/$LOSSBENCH_MACHINE" 2>/dev/null
if [ "$(stat -c %s "$OUT/gpu-run.tar.gz")" -gt $((15 * 1048576)) ]; then
    split -b 15M -d "$OUT/gpu-run.tar.gz" "$OUT/gpu-run.tar.gz." && rm "$OUT/gpu-run.tar.gz"
fi
phase "done: dvc repro exit $REPRO_RC, bench exit $BENCH_RC"
ls -la "$OUT"
[ "$REPRO_RC" -ne 0 ] && exit "$REPRO_RC"
exit "$BENCH_RC"
