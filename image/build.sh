#!/usr/bin/env bash
# `make image`: build $IMAGE_TAG (registry-bot:dev) from this tree's Dockerfile. With `docker build` where a
# Docker engine answers (the Dockerfile's default base, the official python image); otherwise with Debian's
# buildah, from the Debian base that base.sh bootstraps once, into the private store of env.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
. "$here/env.sh"

start=$SECONDS
if [ "$IMAGE_BUILDER" = docker ]; then
  docker build --quiet --tag "$IMAGE_TAG" "$root" >/dev/null
  echo "image: built $IMAGE_TAG with docker in $((SECONDS - start)) s"
  exit 0
fi

"$here/base.sh"
base=localhost/python:3.11-bookworm-local
# What the image is made of: the build context (the files .dockerignore allows), the base, and this script.
# With vfs every build step copies the whole image, so buildah's per-step cache (--layers) costs more than a
# clean build (about 90 s against 60 s here); instead an image built from the same inputs is kept as it is.
inputs=$(
  cd "$root"
  sed -n 's|^!||p' .dockerignore | while read -r path; do
    find "$path" -type f ! -path '*/__pycache__/*' ! -name '*.py[co]'
  done | LC_ALL=C sort | xargs -d '\n' sha256sum
  podman image inspect --format '{{.Id}}' "$base"
  sha256sum <"$here/build.sh"
)
key=$(sha256sum <<<"$inputs" | cut -c1-16)
if [ "$(podman image inspect --format '{{index .Labels "registry-bot.inputs"}}' "$IMAGE_TAG" 2>/dev/null)" = "$key" ]; then
  echo "image: $IMAGE_TAG is up to date (the Dockerfile, its context and the base are unchanged)"
  exit 0
fi

# RUN steps see the host's CA bundle (pip reaches PyPI through whatever this machine trusts), bind-mounted
# read-only over the base's for the step only: nothing of it stays in a layer.
ca=()
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  ca=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi
buildah bud --quiet --isolation chroot --network host --pull=never \
  --build-arg "PYTHON_IMAGE=$base" "${ca[@]}" --label "registry-bot.inputs=$key" \
  --tag "$IMAGE_TAG" --file "$root/Dockerfile" "$root" >/dev/null
podman image prune --force >/dev/null # the image this one replaced, in the private store
echo "image: built $IMAGE_TAG with buildah in $((SECONDS - start)) s"
