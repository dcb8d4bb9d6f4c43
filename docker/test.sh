#!/usr/bin/env bash
# `make docker-test`: build the image and run it as a user would, on a fresh clone of this repository.
# Engine: docker where its engine runs, else podman (ENGINE=... to choose). No network inside the runs; the MNIST mirror
# ($MNIST_MIRROR, a directory of the four .gz files) is mounted read-only. Runs as a non-root --user and
# checks: the no-GPU message; the image's command (`make repro`'s) PASS with every file owned by that user; a second
# run re-runs nothing; `dvc exp run results/local/dvc.yaml -S train.epochs=1` works; exit 3 with LOSSBENCH_REQUIRE_DEVICES=1;
# exit 2 without a mounted repository. Exits 1 if any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

say() { echo "docker-test: $*"; }
if [ -z "${ENGINE:-}" ]; then  # a docker client without a running engine does not count
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker
    else ENGINE=$(command -v podman || true); fi
fi
if [ -z "$ENGINE" ] && [ -x ../shared/container/setup.sh ] && [ "$(id -u)" = 0 ]; then
    say "no docker or podman here: installing podman with ../shared/container/setup.sh"
    ../shared/container/setup.sh >/dev/null
    ENGINE=$(command -v podman)
fi
[ -n "$ENGINE" ] || { say "needs docker or podman, and neither is installed: not run" >&2; exit 2; }
[ -d "${MNIST_MIRROR:-}" ] || { say "MNIST_MIRROR must name a directory holding the four MNIST .gz files" >&2; exit 2; }
IMAGE=${IMAGE:-lossbench}

base=$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile | head -1)
if ! "$ENGINE" image inspect "$base" >/dev/null 2>&1 && ! "$ENGINE" pull -q "$base" >/dev/null 2>&1; then
    if [ -x ../shared/container/stand-in-base.sh ]; then
        say "the base image $base cannot be pulled here: building a LOCAL STAND-IN for it (Debian bookworm +"
        say "Debian's python3 3.11; ../shared/container/stand-in-base.sh). This checks our Dockerfile, not the real base"
        ../shared/container/stand-in-base.sh "$base" >/dev/null
    else
        say "the base image $base cannot be pulled, and no stand-in script is beside this repository" >&2
        exit 2
    fi
fi

# pip behind a TLS-intercepting proxy: the CA bundle as a build secret (LOSSBENCH_CA, else the system's)
ca=${LOSSBENCH_CA:-/etc/ssl/certs/ca-certificates.crt}
secret=()
[ -f "$ca" ] && secret=(--secret "id=ca,src=$ca")
t0=$SECONDS
DOCKER_BUILDKIT=1 "$ENGINE" build -q "${secret[@]}" -t "$IMAGE" . >/dev/null
say "built $IMAGE with $(basename "$ENGINE") in $((SECONDS - t0)) s; size $("$ENGINE" image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.2f GB", $1 / 1e9}')"

work=$(mktemp -d /var/tmp/lossbench-docker-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
git clone -q "$root" "$work/repo"
uid=$(id -u) gid=$(id -g)
if [ "$uid" = 0 ]; then  # root here: play a user, as a real one would run it
    uid=12345 gid=12345
    chown -R "$uid:$gid" "$work/repo"
fi
mkdir -p "$work/empty"
chown "$uid:$gid" "$work/empty"
run() {  # run DIR [ENV=VALUE ...] -- CMD...: the image on DIR, as the user, no network, mirror mounted
    local dir=$1; shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=(-e "$1"); shift; done; shift
    "$ENGINE" run --rm --network none --user "$uid:$gid" -v "$dir":/workspace -v "$MNIST_MIRROR":/mnist:ro \
        -e MNIST_MIRROR=/mnist ${envs[@]+"${envs[@]}"} "$IMAGE" "$@"
}
failed=0
check() {  # check NAME CONDITION-EXIT-STATUS
    if [ "$2" = 0 ]; then say "ok    $1"; else say "FAIL  $1"; failed=1; fi
}

t0=$SECONDS
set +e
run "$work/repo" -- >"$work/repro.log" 2>&1; rc=$?
set -e
say "the image's command (make repro's) in the container: exit $rc, $((SECONDS - t0)) s"
check "the image's command passes" "$([ $rc = 0 ] && grep -q 'report: PASS' "$work/repro.log" && grep -q 'overview: PASS' "$work/repro.log"; echo $?)"
check "no GPU: says why and what to type" "$(grep -q 'no GPU is visible' "$work/repro.log" && grep -q -- '--gpus all' "$work/repro.log"; echo $?)"
strays=$(find "$work/repo" ! -uid "$uid" | head -3)
check "every file owned by the user ($uid)${strays:+: not $strays}" "$([ -z "$strays" ]; echo $?)"

set +e
run "$work/repo" -- >"$work/again.log" 2>&1; rc=$?
set -e
reran=$(grep -o "Running stage '[^']*'" "$work/again.log" | grep -v ":check'" || true)
check "a second run re-runs nothing${reran:+ (ran: $reran)}" "$([ $rc = 0 ] && [ -z "$reran" ]; echo $?)"

set +e
run "$work/repo" -- dvc exp run results/local/dvc.yaml -S train.epochs=1 >"$work/exp.log" 2>&1; rc=$?
set -e
check "dvc exp run results/local/dvc.yaml -S train.epochs=1 after a run$([ $rc = 0 ] || echo ": $(grep -m1 ERROR "$work/exp.log")")" \
    "$([ $rc = 0 ]; echo $?)"

set +e
run "$work/repo" LOSSBENCH_REQUIRE_DEVICES=1 -- >"$work/require.log" 2>&1; rc=$?
set -e
check "LOSSBENCH_REQUIRE_DEVICES=1 without a GPU exits 3 (got $rc)" "$([ $rc = 3 ]; echo $?)"

set +e
run "$work/empty" -- >"$work/nomount.log" 2>&1; rc=$?
set -e
check "no mounted repository exits 2 with the hint (got $rc)" "$([ $rc = 2 ] && grep -q 'no dvc.yaml' "$work/nomount.log"; echo $?)"

if [ $failed != 0 ]; then
    say "logs of the failed runs:"
    tail -n 20 "$work"/*.log
    exit 1
fi
say "all checks passed"
