#!/usr/bin/env bash
# CI: gpu/run.sh in its CPU form, so that the one-run GPU command cannot rot while no GPU is lent.
# A clean virtual environment is given what a lent GPU machine's python has (gpu/host-provides.txt, at our
# pins), then gpu/pack.sh's wheels for its Python, and gpu/run.sh runs in a fresh clone of this checkout.
# Asserts: what travels fits a device call (pack.sh), the carried wheels installed, the cpu configurations
# ran and passed, every cuda one is *not run* with its reason, the bench ran, and the bf16 and compile phases
# judged their configurations.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PYTHON=${PYTHON:-python3}

echo "gpu-check: a clean virtual environment with only what the GPU host provides"
"$PYTHON" -m venv "$WORK/host"
pins=$(grep -vE '^\s*(#|$)' gpu/host-provides.txt | while read -r name _; do
    grep -iE "^${name}==" requirements.txt requirements-dev.txt | head -1 | sed 's/^[^:]*://; s/ .*//'
done)
# shellcheck disable=SC2086  # one pin a word
"$WORK/host/bin/pip" install -q --disable-pip-version-check $pins
"$WORK/host/bin/python" -c "import dvc" 2>/dev/null && { echo "gpu-check: dvc is already in the host environment" >&2; exit 1; }

git clone -q "$REPO" "$WORK/repo"
cd "$WORK/repo"
PYVER=$("$WORK/host/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
bash gpu/pack.sh "$PYVER" 2> >(grep -v '^WARNING: Location' >&2)

echo "gpu-check: gpu/run.sh, CPU form"
rc=0
OUT="$WORK/out" LOSSBENCH_MACHINE=gpu PYTHON="$WORK/host/bin/python" BENCH_TIMEOUT=300 REPRO_TIMEOUT=900 BF16_TIMEOUT=600 COMPILE_TIMEOUT=900 \
    bash gpu/run.sh || rc=$?
mkdir "$WORK/back" && cat "$WORK"/out/gpu-run.tar.gz* | tar xz -C "$WORK/back"
"$WORK/host/bin/python" - "$WORK/back" "$rc" <<'PYEOF'
import json, sys
from pathlib import Path
back, rc = Path(sys.argv[1]), int(sys.argv[2])
problems = []
installed = (back / "gpu-log/install.txt").read_text()
if "dvc-" not in installed:
    problems.append("the carried dvc wheel was not installed")
summary = json.loads((back / "gpu-log/report-fp32/summary.json").read_text())  # the fp32 defaults' report
configs = summary["configs"]
for setting, key, value in (("bf16", "precision", "bf16"), ("compile", "mode", "compiled")):  # then, on cpu here
    judged = json.loads((back / f"gpu-log/report-{setting}/summary.json").read_text())["configs"]
    for name, c in judged.items():
        if c[key] != value:
            continue
        if c["device"] == "cuda":
            problems.append(f"{name}: the {setting} phase trains the GPU's device only, cpu where none is visible")
            continue
        if c.get("reference") is None:  # a reference is judged by nothing: its verdict says so
            want = ("reference",)
        else:
            want = ("equal", "differs", "unsupported")
        if c.get("verdict") not in want:
            problems.append(f"{name}: expected one of {want} under {setting}, got {c.get('verdict')!r}")
    if not any(c[key] == value for c in judged.values()):
        problems.append(f"the {setting} phase judged no {value} configuration")
    if any(c.get("repeats", 1) != 1 for c in judged.values() if c.get("status") == "ran"):
        problems.append(f"the {setting} phase trains 1 repeat a configuration")
for name, c in configs.items():
    if c["device"] == "cuda":
        if c.get("verdict") != "not run" or "no GPU is visible" not in c.get("reason", ""):
            problems.append(f"{name}: expected 'not run' because no GPU is visible, got {c.get('verdict')!r}")
    elif c.get("status") != "ran":
        problems.append(f"{name}: expected to run on the CPU, got {c.get('status')!r}")
if not summary.get("passed"):
    problems.append("the report did not pass")
bench = (back / "gpu-log/bench.txt").read_text()
if "losses bitwise identical: True" not in bench or "## Cost on cpu" not in bench:
    problems.append("the bench did not run to its end")
if rc != 0:
    problems.append(f"gpu/run.sh exited {rc}")
for p in problems:
    print("gpu-check: FAIL:", p, file=sys.stderr)
if problems:
    sys.exit(1)
print(f"gpu-check: PASS ({sum(c['device'] == 'cuda' for c in configs.values())} cuda configurations not run, with reasons)")
PYEOF
