#!/usr/bin/env bash
# lossbench container entrypoint: make the mounted repository usable, check the GPU, run the command.
set -euo pipefail

# An unknown uid (docker run --user) may have no writable HOME: git and DVC need one.
if ! { [ -n "${HOME:-}" ] && [ -d "$HOME" ] && [ -w "$HOME" ]; }; then
    HOME="$(mktemp -d)"
    export HOME
fi

if [ ! -f dvc.yaml ]; then
    echo "lossbench: no dvc.yaml in $PWD: mount the repository, e.g." >&2
    echo "  docker run --rm --gpus all --user \"\$(id -u):\$(id -g)\" -v \"\$PWD\":/workspace IMAGE" >&2
    exit 2
fi

# The bind-mounted repo belongs to the host user, not necessarily to us: without this,
# git's "dubious ownership" check stops `dvc repro` and `dvc exp run`.
if ! git config --global --get-all safe.directory 2>/dev/null | grep -qxF "$PWD"; then
    git config --global --add safe.directory "$PWD"
fi

# `dvc exp run` stashes the workspace with git, which needs an identity. A fallback only where none is
# configured (a mounted ~/.gitconfig, GIT_AUTHOR_NAME, ...): the user's own always wins.
if ! git config user.name >/dev/null 2>&1 && [ -z "${GIT_AUTHOR_NAME:-}" ]; then
    git config --global user.name "lossbench container"
fi
if ! git config user.email >/dev/null 2>&1 && [ -z "${GIT_AUTHOR_EMAIL:-}" ]; then
    git config --global user.email "lossbench@container.invalid"
fi

# CUDA configurations requested but no GPU visible: say why and what to type.
# LOSSBENCH_REQUIRE_DEVICES=1 makes that fatal (exit 3); otherwise they are reported as not run.
python -m lossbench.gpu || exit $?

exec "$@"
