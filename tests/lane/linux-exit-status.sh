#!/bin/sh
# Stock Linux under nitrovm with 2 vCPUs: the command's exit status comes back
# through the debug exit port as nitrovm's own.
/bin/nitrovm run --guest linux --kernel /images/vmlinuz --initrd /images/initramfs.cpio.gz \
    --vcpus 2 -- sh -c 'exit 7'
status=$?
echo "linux-exit-status: nitrovm exited with $status (want 7)"
[ "$status" = 7 ]
