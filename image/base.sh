#!/usr/bin/env bash
# The base image for building without the official python image (which cannot be fetched here): Debian
# bookworm's own python3 in a minimal rootfs made by mmdebstrap, imported into the private store (env.sh) as
# localhost/python:3.11-bookworm-local. Built once: the tarball is cached under $IMAGE_CACHE, keyed by this
# script's contents, and re-imported only when the store lost it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
IMAGE_BUILDER=buildah
. "$here/env.sh"

BASE_IMAGE=localhost/python:3.11-bookworm-local
key=$(sha256sum <"$here/base.sh" | cut -c1-12)
tarball="$IMAGE_CACHE/base-$key.tar"

if [ ! -s "$tarball" ]; then
  echo "image: bootstrapping the base rootfs with mmdebstrap (once; cached as $tarball)"
  rm -f "$IMAGE_CACHE"/base-*.tar
  # minbase + the python the Dockerfile needs; merged /usr made by the hook, so the usrmerge package (and perl
  # with it) stays out; no docs (but their copyright files), man pages, info or locales.
  log="$IMAGE_CACHE/mmdebstrap.log"
  if ! mmdebstrap --variant=minbase --format=tar \
    --include=python3,python3-venv,python-is-python3,ca-certificates,netbase,tzdata \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    bookworm "$tarball.part" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "image: mmdebstrap failed; its log: $log" >&2
    exit 1
  fi
  mv "$tarball.part" "$tarball"
fi

if [ "$(podman image inspect --format '{{index .Labels "registry-bot.base"}}' "$BASE_IMAGE" 2>/dev/null)" != "$key" ]; then
  # An imported tarball has no environment: without PATH, the Dockerfile's PATH=/opt/venv/bin:$PATH would
  # lose /usr/bin.
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL registry-bot.base=$key" \
    --change 'CMD ["python3"]' \
    "$tarball" "$BASE_IMAGE" >/dev/null
  echo "image: imported $BASE_IMAGE ($(du -m "$tarball" | cut -f1) MB rootfs)"
fi
