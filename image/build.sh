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
else
  "$here/base.sh"
  # RUN steps see the host's CA bundle (pip reaches PyPI through whatever this machine trusts), bind-mounted
  # read-only over the base's for the step only: nothing of it stays in a layer.
  ca=()
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    ca=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  fi
  buildah bud --quiet --isolation chroot --network host --layers --pull=never \
    --build-arg PYTHON_IMAGE=localhost/python:3.11-bookworm-local "${ca[@]}" \
    --tag "$IMAGE_TAG" --file "$root/Dockerfile" "$root" >/dev/null
fi
echo "image: built $IMAGE_TAG with $IMAGE_BUILDER in $((SECONDS - start)) s"
