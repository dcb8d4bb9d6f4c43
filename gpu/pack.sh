#!/usr/bin/env bash
# Fill .gpu/ (Git-ignored) with what gpu/run.sh needs on a host that has a CUDA torch but not our virtual
# environment: MNIST, and wheels for every package that dvc, pydantic and ruamel.yaml need, at our pins
# (requirements.txt), for that host's Python. gpu/run.sh installs only those the host lacks. torch,
# torchvision and numpy never travel: pinned ones would shadow the host's CUDA build.
#   MNIST_MIRROR=/path/to/mnist gpu/pack.sh [PYTHON_VERSION]   # default 3.12, the lent GPU machines' Python
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${1:-3.12}
PACK=.gpu
LIMIT_MIB=64   # what one device call carries: the working tree and this folder together
MIRROR=${MNIST_MIRROR:?set MNIST_MIRROR to a folder holding the four MNIST .gz files}
pin() { grep -E "^$1==" requirements.txt | sed 's/ .*//'; }   # one source of truth for versions

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/wheels" "$tmp/mnist"
cp "$MIRROR"/*-ubyte.gz "$tmp/mnist/"
# hydra-core (a dvc dependency) pins antlr4-python3-runtime 4.9.*, published only as a source archive:
# built here into a pure-Python wheel, which pip then finds beside the others.
python3 -m pip wheel -q --no-deps --disable-pip-version-check -w "$tmp/wheels" "antlr4-python3-runtime==4.9.3"
python3 -m pip download -q --disable-pip-version-check --only-binary=:all: --find-links "$tmp/wheels" \
    --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_26_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux1_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 \
    -d "$tmp/wheels" "$(pin dvc)" "$(pin pydantic)" "$(pin ruamel.yaml)"
if ls "$tmp/wheels" | grep -qiE '^(torch|torchvision|numpy)-'; then
    echo "gpu/pack.sh: torch, torchvision or numpy was resolved as a dependency; it must not travel" >&2; exit 1
fi
rm -rf "$PACK" && mv "$tmp" "$PACK" && trap - EXIT
chmod 755 "$PACK"
size=$(( $(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1) + $(du -sb "$PACK" | cut -f1) ))
echo "gpu/pack.sh: $(ls "$PACK/wheels" | wc -l) wheels for Python $PYVER; the working tree and $PACK: $((size / 1048576)) MiB (limit $LIMIT_MIB)"
[ "$size" -lt $((LIMIT_MIB * 1048576)) ] || { echo "gpu/pack.sh: over the $LIMIT_MIB MiB a device call carries" >&2; exit 1; }
