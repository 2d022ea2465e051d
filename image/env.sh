# Sourced (by bash) by the image scripts. It picks the engine and, for podman and buildah, gives them a private
# store and configuration named by CONTAINERS_STORAGE_CONF and CONTAINERS_CONF, so the machine's
# /etc/containers and /var/lib/containers stay as they were. To look at what `make image` built:
#   . image/env.sh && podman images
#
# IMAGE_BUILDER: docker where a Docker engine answers, else buildah (and podman to run); set it to choose.
# IMAGE_CACHE: the store and the bootstrapped base (default /var/cache/registry-bot-image).
if [ -z "${IMAGE_BUILDER:-}" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then IMAGE_BUILDER=docker; else IMAGE_BUILDER=buildah; fi
fi
case "$IMAGE_BUILDER" in
docker) IMAGE_ENGINE=docker ;;
buildah) IMAGE_ENGINE=podman ;;
*) echo "image: IMAGE_BUILDER must be docker or buildah, not '$IMAGE_BUILDER'" >&2; return 2 ;;
esac
: "${IMAGE_TAG:=registry-bot:dev}"
: "${IMAGE_CACHE:=/var/cache/registry-bot-image}"
export IMAGE_BUILDER IMAGE_ENGINE IMAGE_TAG IMAGE_CACHE

if [ "$IMAGE_ENGINE" = podman ]; then
  # This kind of machine needs: the vfs storage driver (no overlay on its filesystem), runc (crun refuses its
  # hybrid cgroups), cgroupfs (no systemd), and default ulimits a container can take: ours for open files, and
  # at most 32768 processes, where podman and buildah put their own limit when they cannot raise it (root here
  # lacks CAP_SYS_RESOURCE; podman's default of 1048576 fails to start any container). Containers share the
  # host's network: every peer is on loopback.
  _image_limit() { # the hard limit of one `ulimit` flag, at most $2
    local hard
    hard=$(ulimit -H "$1")
    if [ "$hard" = unlimited ] || [ "$hard" -gt "$2" ]; then hard=$2; fi
    echo "$hard:$hard"
  }
  image_run=/run/registry-bot-image
  mkdir -p "$IMAGE_CACHE/conf" "$image_run"
  cat >"$IMAGE_CACHE/conf/storage.conf" <<CONF
[storage]
driver = "vfs"
graphroot = "$IMAGE_CACHE/storage"
runroot = "$image_run/storage"
CONF
  cat >"$IMAGE_CACHE/conf/containers.conf" <<CONF
[containers]
netns = "host"
default_ulimits = ["nofile=$(_image_limit -n 1048576)", "nproc=$(_image_limit -u 32768)"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$image_run/events.log"
tmp_dir = "$image_run/libpod"
CONF
  export CONTAINERS_CONF="$IMAGE_CACHE/conf/containers.conf"
  export CONTAINERS_STORAGE_CONF="$IMAGE_CACHE/conf/storage.conf"
fi
