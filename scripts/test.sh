#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs every test through CTest: unit tests, guest
# tests with the probe guest, and the stock Linux guest in the KVM-in-TCG lane (label
# linux-lane). Guest tests report "skipped" with the reason when /dev/kvm is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
"$ROOT/scripts/setup.sh"
cd "$BUILD_DIR"
ctest --output-on-failure "$@"
