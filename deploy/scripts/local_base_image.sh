#!/usr/bin/env bash
# Make a local stand-in for the official python slim base image, for machines that cannot pull from a
# container registry: a Debian bookworm root filesystem from debootstrap (its python3 is 3.11, as in
# python:3.11-slim-bookworm) with venv, pip, CA certificates and `python` -> `python3`, committed into
# the local containers-storage (buildah's and podman's) as
#   localhost/saver-base:bookworm-py3-<hash of this script>
# The tag names the recipe, so an image made by an older version of this script is never reused, and the
# debootstrap run (about 100 s) happens once per machine. Prints the image name on stdout.
# Needs root, debootstrap and buildah. The Debian mirror is the machine's own (its apt sources).
set -euo pipefail

recipe_hash=$(sha256sum "$0" | cut -c1-12)
image="localhost/saver-base:bookworm-py3-${recipe_hash}"
if buildah inspect --type image "$image" > /dev/null 2>&1; then
    echo "$image"
    exit 0
fi

# The mirror apt uses here (deb822 or one-line sources), else Debian's default.
mirror=$(grep -hoE '^URIs: *\S+/debian/?$' /etc/apt/sources.list.d/*.sources 2> /dev/null | head -n1 | awk '{print $2}' || true)
if [ -z "$mirror" ]; then
    mirror=$(grep -hoE '^deb +\S+/debian/? +bookworm' /etc/apt/sources.list 2> /dev/null | head -n1 | awk '{print $2}' || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

rootfs=$(mktemp -d /var/tmp/saver-base.XXXXXX)
container=""
cleanup() {
    if [ -n "$container" ]; then buildah rm "$container" > /dev/null 2>&1 || true; fi
    rm -rf "$rootfs"
}
trap cleanup EXIT

echo "debootstrap bookworm from $mirror" >&2
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" "$mirror" > "$rootfs.log" 2>&1 || { cat "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
# The official image has `python`; the Dockerfile calls it by that name.
ln -sf python3 "$rootfs/usr/bin/python"
# What a slim image leaves out: package lists, caches, logs of the bootstrap itself.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/log/*.log "$rootfs"/debootstrap

container=$(buildah from scratch)
mountpoint=$(buildah mount "$container")
tar -C "$rootfs" -cf - . | tar -C "$mountpoint" -xpf -
buildah umount "$container" > /dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd python3 --label "org.opencontainers.image.description=debootstrap bookworm + python3 (saver local base)" \
    "$container"
buildah commit --quiet "$container" "$image" > /dev/null
echo "$image"
