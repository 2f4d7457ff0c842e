#!/usr/bin/env bash
# Installs what the project needs on Debian 12, builds everything into build/, and makes the
# guest images. Idempotent: a second run only rebuilds what changed.
# Usage: scripts/setup.sh            (BUILD_DIR overrides build/)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"

PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libspdlog-dev libfmt-dev doctest-dev libcli11-dev liburing-dev
  clang-19 lld-19 libclang-rt-19-dev
  busybox-static kmod cpio gzip lz4
  qemu-system-x86 fio procps python3-matplotlib
  libsystemc-dev nlohmann-json3-dev
  libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc grpc-proto
  python3-grpcio python3-protobuf
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then echo "setup: need root to install packages" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"
"$ROOT/guest/linux/build-image.sh" "$BUILD_DIR/images"
