#!/usr/bin/env bash
# Builds the gateway images with podman on a machine that reaches no container registry:
#   1. installs podman, debootstrap and runc from Debian's packages if missing;
#   2. makes the base image (Debian bookworm minbase + python3) with debootstrap, once;
#   3. stages every dependency as a wheel under var/image/wheels with this machine's pip (so the CPU torch
#      wheel is used: set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu where pip finds no CPU
#      torch by itself), once per set of dependencies: requirements.txt (serving) and train.txt (the `train`
#      extra, which also builds the encoder caches);
#   4. builds the Containerfile's two targets: IMAGE, the serving image (no torch, transformers or
#      scikit-learn), and TRAIN_IMAGE, the same plus the train extra (`moe router train`: the chart's
#      retraining job); podman's layer cache makes a rebuild after a source change take seconds.
# Idempotent. Environment: IMAGE (default localhost/moe-gateway:dev), TRAIN_IMAGE (default: IMAGE's repository
# with -train, same tag: localhost/moe-gateway-train:dev), ROUTERS (a folder of trained router artifacts to bake
# into both, default none), DEBIAN_MIRROR (default: the one apt uses here).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/moe-gateway:dev}
TRAIN_IMAGE=${TRAIN_IMAGE:-${IMAGE%:*}-train:${IMAGE##*:}}
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
# requirements.txt is the serving install; train.txt the train extra (its `moe-gateway[...]` entries spelled
# out) with the CPU torch first.
mkdir -p "$STAGE"
"$PY" - "$STAGE" "$TORCH_VERSION" <<'PY'
import re
import sys
import tomllib
from pathlib import Path

stage, torch = Path(sys.argv[1]), sys.argv[2]
project = tomllib.load(open("pyproject.toml", "rb"))["project"]


def extra(name: str) -> list[str]:
    out = []
    for requirement in project["optional-dependencies"][name]:
        own = re.fullmatch(r"moe-gateway\[(.+)\]", requirement.replace(" ", ""))
        out += [r for e in own.group(1).split(",") for r in extra(e)] if own else [requirement]
    return out


(stage / "requirements.txt").write_text("\n".join(project["dependencies"]) + "\n")
(stage / "train.txt").write_text("\n".join([f"torch=={torch}", *extra("train")]) + "\n")
PY
cat "$STAGE/requirements.txt" "$STAGE/train.txt" > "$STAGE/all.txt"
if ! cmp -s "$STAGE/all.txt" "$STAGE/wheels/all.txt"; then
  rm -rf "$STAGE/wheels" && mkdir -p "$STAGE/wheels"
  # async-timeout: redis needs it on Python < 3.11.3 (the base's is Debian's 3.11.2), and pip evaluates such
  # markers against the Python it runs on, not the image's.
  "$PY" -m pip wheel -q --disable-pip-version-check -w "$STAGE/wheels" -r "$STAGE/all.txt" \
    "setuptools>=69" "async-timeout>=4.0.3"
  cp "$STAGE/requirements.txt" "$STAGE/train.txt" "$STAGE/wheels/"
  cp "$STAGE/all.txt" "$STAGE/wheels/all.txt"  # last: marks the wheelhouse complete
fi

rm -rf "$STAGE/routers" && mkdir -p "$STAGE/routers"
if [ -n "${ROUTERS:-}" ]; then cp -r "$ROUTERS"/. "$STAGE/routers/"; fi

podman build --isolation chroot --layers --build-arg BASE="$BASE" --target train -t "$TRAIN_IMAGE" -f Containerfile .
podman build --isolation chroot --layers --build-arg BASE="$BASE" --target serve -t "$IMAGE" -f Containerfile .
