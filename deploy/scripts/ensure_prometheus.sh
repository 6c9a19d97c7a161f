#!/usr/bin/env bash
# Make `prometheus` and `promtool` available for tests/deploy (Debian package `prometheus`).
# Exit 0 when both are on PATH afterwards; exit 2 (with the reason on stderr) when they are missing and
# cannot be installed here (not root, no apt-get, no package index), so that the tests can skip.
set -euo pipefail

if command -v promtool > /dev/null 2>&1 && command -v prometheus > /dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "prometheus/promtool not found and not root: install the Debian package 'prometheus'" >&2
    exit 2
fi
if ! command -v apt-get > /dev/null 2>&1; then
    echo "prometheus/promtool not found and no apt-get to install them" >&2
    exit 2
fi

export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends prometheus > /dev/null 2>&1; then
    apt-get update -q > /dev/null 2>&1 || true
    if ! apt-get install -y -q --no-install-recommends prometheus > /dev/null; then
        echo "apt-get install prometheus failed" >&2
        exit 2
    fi
fi
# The package starts its own server on :9090; the tests run theirs on a free port with a temp dir.
if command -v systemctl > /dev/null 2>&1 && systemctl is-active --quiet prometheus 2> /dev/null; then
    systemctl stop prometheus || true
fi
if command -v service > /dev/null 2>&1; then
    service prometheus stop > /dev/null 2>&1 || true
fi

command -v promtool > /dev/null 2>&1 && command -v prometheus > /dev/null 2>&1
