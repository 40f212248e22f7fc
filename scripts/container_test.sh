#!/usr/bin/env bash
# make container-test: build the Dockerfile with podman and use the image as the README does.
#
#   seglab --version; seglab demo --time-budget 20; seglab serve with a published loopback port and
#   a token: /healthz and one /v1/predict from this machine with curl (the mask equals the host's
#   `seglab predict`), the image's HEALTHCHECK, a SIGTERM stop by container id; bad input (no model
#   mounted, a public address without a token) gets the host command's one-line errors.
#
# The base is python:3.11-slim when a registry answers, else a minimal Debian of this machine's
# release made with debootstrap from the mirror apt uses here (kept as localhost/seglab-debian:SUITE).
# pip's settings of this machine are mounted into the build (scripts/pip_settings.py). Needs root on
# a Debian-like machine; installs podman, runc and debootstrap when missing.
#
# Environment: SEGLAB_COMMAND (the host's seglab, default .venv/bin/seglab), SEGLAB_IMAGE (the tag
# built, default localhost/seglab:test), SEGLAB_BASE_IMAGE (skip the registry try and use this base).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${SEGLAB_IMAGE:-localhost/seglab:test}
REGISTRY_BASE=docker.io/library/python:3.11-slim
HOST_SEGLAB=${SEGLAB_COMMAND:-.venv/bin/seglab}
HOST_PYTHON=$(dirname "$HOST_SEGLAB")/python
export CONTAINERS_CONF=$PWD/scripts/containers.conf
WORK=$(mktemp -d)
SERVER=""  # id of the serve container while it runs
DEMO=""    # id of the demo container until its model is copied out

say() { printf 'container-test: %s\n' "$*"; }
fail() { say "FAILED: $*" >&2; exit 1; }
cleanup() {
    for id in $SERVER $DEMO; do podman rm -f "$id" >/dev/null 2>&1 || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

install_tools() {
    command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null && return
    [ "$(id -u)" = 0 ] || fail "podman, runc and debootstrap are needed: run as root, or apt-get install them"
    say "installing podman, runc, debootstrap"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap) \
        >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; fail "apt-get install podman runc debootstrap"; }
}

# Sets BASE: the registry's python image if it can be pulled, else a debootstrapped Debian.
choose_base() {
    if [ -n "${SEGLAB_BASE_IMAGE:-}" ]; then BASE=$SEGLAB_BASE_IMAGE; return; fi
    if timeout 120 podman pull -q "$REGISTRY_BASE" >/dev/null 2>&1; then BASE=$REGISTRY_BASE; return; fi
    local suite mirror
    suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
    BASE=localhost/seglab-debian:$suite
    if podman image exists "$BASE"; then return; fi
    mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' | awk -v s="$suite" '$2 == s {print $1; exit}')
    [ -n "$mirror" ] || fail "no apt mirror for $suite in apt's sources: cannot debootstrap a base image"
    say "no registry reachable: debootstrap --variant=minbase $suite from apt's mirror"
    debootstrap --variant=minbase "$suite" "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap $suite"; }
    tar -C "$WORK/rootfs" -c . | podman import -q - "$BASE" >/dev/null
    rm -rf "$WORK/rootfs"
}

# pip's settings of this machine reach the build's RUN steps as mounts: pip.conf at /etc/pip.conf
# (podman leaves an empty file there in the test's image, which pip reads as no settings) and the
# local folders it names under /dev/host-pip (the build's own /dev: nothing of it stays in the image).
build_image() {
    local mounts=(-v "$WORK/pip/pip.conf:/etc/pip.conf:ro") volume
    mkdir -p "$WORK/pip"
    while read -r volume; do mounts+=(-v "$volume"); done < <(python3 scripts/pip_settings.py "$WORK/pip" /dev/host-pip)
    say "podman build (base $BASE)"
    local started=$SECONDS
    # --format docker keeps HEALTHCHECK (the OCI format has none); the host network reaches the index.
    podman build --format docker --network host "${mounts[@]}" --build-arg "BASE_IMAGE=$BASE" -t "$IMAGE" . \
        >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; fail "podman build"; }
    BUILD_S=$((SECONDS - started))
    local bytes
    bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
    say "built $IMAGE in ${BUILD_S} s; image size $((bytes / 1000000)) MB"
}

check_version() {
    local expected got
    expected="seglab $(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/seglab/version.py)"
    got=$(podman run --rm --no-healthcheck "$IMAGE" --version)
    [ "$got" = "$expected" ] || fail "seglab --version in the image said '$got', expected '$expected'"
    say "$got"
}

# Trains the demo in the image; leaves its last.pt in $WORK/models.
check_demo() {
    say "seglab demo --time-budget 20 (the image's bundled ISBI slices)"
    # One OpenMP thread, as the test suite's processes: on this 2-core machine the demo took 131 s
    # so, and 210 s with torch's two threads spinning against other work.
    DEMO=$(podman create --no-healthcheck -e OMP_NUM_THREADS=1 "$IMAGE" demo --time-budget 20 --no-progress \
        --out runs/demo)
    podman start -a "$DEMO" >"$WORK/demo.log" 2>&1 || { tail -20 "$WORK/demo.log"; fail "seglab demo"; }
    grep -q "held-out slices 25-29: pixel error" "$WORK/demo.log" || fail "the demo printed no scores"
    mkdir -p "$WORK/models"
    podman cp "$DEMO:/home/seglab/runs/demo/last.pt" "$WORK/models/last.pt"
    podman rm "$DEMO" >/dev/null
    DEMO=""
    tail -3 "$WORK/demo.log" | sed 's/^/    /'
}

# The container's one-line error for `serve ARGS` must be the host command's, with the same exit code.
same_refusal() {
    local host_err container_err host_rc=0 container_rc=0
    host_err=$(env -u SEGLAB_TOKEN "$HOST_SEGLAB" serve "$@" 2>&1 >/dev/null) || host_rc=$?
    container_err=$(podman run --rm --no-healthcheck "$IMAGE" serve "$@" 2>&1 >/dev/null) || container_rc=$?
    [ "$host_rc" = 1 ] && [ "$(wc -l <<<"$host_err")" = 1 ] || fail "host: serve $* gave rc $host_rc: $host_err"
    [ "$container_rc" = "$host_rc" ] && [ "$container_err" = "$host_err" ] \
        || fail "serve $*: the image said (rc $container_rc) '$container_err', the command '$host_err'"
    say "refused as the command is: $container_err"
}

check_refusals() {
    same_refusal -m /models/best.pt --host 0.0.0.0 --token not-used  # no model mounted
    same_refusal -m /models/best.pt --host 0.0.0.0                   # a public address, no token
}

# Waits for /healthz on $1 while the server container runs (at most 180 s).
wait_healthy() {
    local deadline=$((SECONDS + 180))
    until curl -sf "$1/healthz" >"$WORK/healthz.json"; do
        [ "$(podman inspect --format '{{.State.Running}}' "$SERVER")" = true ] \
            || { podman logs "$SERVER" 2>&1 | tail -20; fail "seglab serve exited before answering"; }
        [ "$SECONDS" -lt "$deadline" ] || fail "/healthz did not answer within 180 s"
        sleep 1
    done
    grep -q '"status":"ok"' "$WORK/healthz.json" || fail "/healthz answered $(cat "$WORK/healthz.json")"
}

# The served mask against the host's `seglab predict` of the same checkpoint (share of equal pixels).
compare_masks() {
    "$HOST_SEGLAB" predict -m "$WORK/models/last.pt" -i "$1" -o "$WORK/host.png" --device cpu >/dev/null
    "$HOST_PYTHON" - "$WORK/served.png" "$WORK/host.png" <<'PYTHON'
import sys

import numpy as np
from PIL import Image

served, host = (np.asarray(Image.open(path)) for path in sys.argv[1:])
if served.shape != host.shape:
    sys.exit(f"served mask {served.shape}, seglab predict's {host.shape}")
equal = float((served == host).mean())
print(f"served mask equals seglab predict's on {equal:.4%} of its pixels")
sys.exit(0 if equal >= 0.999 else "the served mask differs from seglab predict's")
PYTHON
}

check_serve() {
    local token port url image=data/isbi2012/test/images/00.png code
    token=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    url=http://127.0.0.1:$port
    # The token reaches the container through its environment, not podman's command line.
    # podman's stderr goes to a file: without systemd it logs that it cannot time the HEALTHCHECK
    # (`podman healthcheck run` below runs it by hand).
    SERVER=$(SEGLAB_TOKEN=$token podman run -d -e SEGLAB_TOKEN -p "127.0.0.1:$port:8000" \
        -v "$WORK/models:/models:ro" "$IMAGE" serve -m /models/last.pt --host 0.0.0.0 2>"$WORK/run.log") \
        || { cat "$WORK/run.log"; fail "podman run seglab serve"; }
    say "seglab serve in container ${SERVER:0:12}, published on $url"
    wait_healthy "$url"
    code=$(curl -s -o /dev/null -w '%{http_code}' -F "file=@$image" "$url/v1/predict")
    [ "$code" = 401 ] || fail "/v1/predict without the token answered $code, expected 401"
    curl -sf -H "Authorization: Bearer $token" -F "file=@$image" "$url/v1/predict" -o "$WORK/served.png" \
        || fail "/v1/predict with the token"
    compare_masks "$image" || fail "the served mask"
    podman healthcheck run "$SERVER" >/dev/null || fail "the image's HEALTHCHECK said unhealthy"
    say "HEALTHCHECK: healthy"
    podman stop -t 40 "$SERVER" >/dev/null 2>>"$WORK/run.log"
    [ "$(podman inspect --format '{{.State.ExitCode}}' "$SERVER")" = 0 ] || fail "serve's exit code after SIGTERM"
    podman logs "$SERVER" 2>&1 | grep "^stopped (SIGTERM)" | sed 's/^/    /' || fail "serve printed no stop line"
    podman rm "$SERVER" >/dev/null 2>>"$WORK/run.log"
    SERVER=""
}

main() {
    local started=$SECONDS
    [ -x "$HOST_SEGLAB" ] || fail "no seglab at $HOST_SEGLAB (make install, or set SEGLAB_COMMAND)"
    install_tools
    choose_base
    say "tools and base image ready in $((SECONDS - started)) s"
    build_image
    check_version
    check_refusals
    check_demo
    check_serve
    say "passed in $((SECONDS - started)) s (build ${BUILD_S} s)"
}

main
