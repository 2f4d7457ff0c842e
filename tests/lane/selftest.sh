#!/bin/sh
# Lane self-test: /dev/kvm is there and runs a guest (tests/lane/kvm-smoke.c).
set -e
[ -c /dev/kvm ] || { echo "selftest: no /dev/kvm"; exit 1; }
if [ -d /sys/module/kvm_amd ]; then
    for p in npt nested nrips vgif avic; do
        printf 'selftest: kvm_amd.%s=%s\n' "$p" "$(cat /sys/module/kvm_amd/parameters/$p 2>/dev/null)"
    done
fi
kvm-smoke
