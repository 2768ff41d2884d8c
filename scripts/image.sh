#!/usr/bin/env bash
# Builds the gateway image with podman on a machine that reaches no container registry:
#   1. installs podman, debootstrap and runc from Debian's packages if missing;
#   2. makes the base image (Debian bookworm minbase + python3) with debootstrap, once;
#   3. stages every dependency as a wheel under var/image/wheels with this machine's pip (so the CPU torch
#      wheel is used: set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu where pip finds no CPU
#      torch by itself), once per pyproject.toml;
#   4. builds the Containerfile; podman's layer cache makes a rebuild after a source change take seconds.
# Idempotent. Environment: IMAGE (default localhost/moe-gateway:dev), ROUTERS (a folder of trained router
# artifacts to bake into the image, default none), DEBIAN_MIRROR (default: the one apt uses here).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/moe-gateway:dev}
BASE=${BASE:-localhost/moe-base:bookworm}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PY=${PY:-.venv/bin/python}
STAGE=var/image
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/containers.conf}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman debootstrap runc >/dev/null
fi

debian_mirror() {
  # The first Debian archive apt is configured with (deb822 or one-line format), else the default one.
  local uri
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1 || true)
  [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

if ! podman image exists "$BASE"; then
  rootfs=$(mktemp -d)
  trap 'as_root rm -rf "$rootfs"' EXIT
  as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "${DEBIAN_MIRROR:-$(debian_mirror)}" >/dev/null
  as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  as_root tar -C "$rootfs" -c . | podman import --quiet - "$BASE" >/dev/null
fi

# The wheelhouse: the project's dependencies resolved once by this machine's pip, plus setuptools to build
# the project itself; remade when the dependencies or the torch version change (not the rest of pyproject.toml).
mkdir -p "$STAGE"
"$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
  > "$STAGE/requirements.txt"
echo "torch==$TORCH_VERSION" >> "$STAGE/requirements.txt"
if ! cmp -s "$STAGE/requirements.txt" "$STAGE/wheels/requirements.txt"; then
  rm -rf "$STAGE/wheels" && mkdir -p "$STAGE/wheels"
  # async-timeout: redis needs it on Python < 3.11.3 (the base's is Debian's 3.11.2), and pip evaluates such
  # markers against the Python it runs on, not the image's.
  "$PY" -m pip wheel -q --disable-pip-version-check -w "$STAGE/wheels" -r "$STAGE/requirements.txt" \
    "setuptools>=69" "async-timeout>=4.0.3"
  cp "$STAGE/requirements.txt" "$STAGE/wheels/requirements.txt"  # last: marks the wheelhouse complete
fi

rm -rf "$STAGE/routers" && mkdir -p "$STAGE/routers"
if [ -n "${ROUTERS:-}" ]; then cp -r "$ROUTERS"/. "$STAGE/routers/"; fi

podman build --isolation chroot --layers --build-arg BASE="$BASE" -t "$IMAGE" -f Containerfile .
