#!/usr/bin/env bash
# Make `buildah` and `debootstrap` available for `make image` / `make image-test` on a machine without a
# Docker daemon (Debian packages; installed only when missing, and only as root). The local bookworm
# base they make is cached in containers-storage by recipe hash (local_base_image.sh), not here.
set -euo pipefail

missing=()
command -v buildah > /dev/null 2>&1 || missing+=(buildah)
command -v debootstrap > /dev/null 2>&1 || missing+=(debootstrap)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null 2>&1; then
    echo "missing ${missing[*]}: install them (Debian packages) or run as root with apt-get" >&2
    exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "${missing[@]}" > /dev/null 2>&1 \
    || { apt-get update -q > /dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" > /dev/null; }
