#!/usr/bin/env bash
# The tools `make image` and `make image-test` use, from Debian: installed when missing if we are root, else
# named. With a Docker engine (see env.sh) the build needs none of mmdebstrap, buildah, podman and runc.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/env.sh"

declare -A package=([skopeo]=skopeo [umoci]=umoci [docker-registry]=docker-registry)
if [ "$IMAGE_BUILDER" = buildah ]; then
  package+=([mmdebstrap]=mmdebstrap [buildah]=buildah [podman]=podman [runc]=runc)
fi
missing=()
for tool in "${!package[@]}"; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("${package[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "image: missing ${missing[*]}; run: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}" >/dev/null
