#!/usr/bin/env bash
# Install what mooncake needs to build and test on a fresh Debian 12 machine.
# Idempotent and quick when everything is already there.
set -euo pipefail
need=()
for p in build-essential cmake pkg-config libcmocka-dev clang libclang-rt-14-dev \
         libcurl4-openssl-dev libcjson-dev etcd-server etcd-client iproute2; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
