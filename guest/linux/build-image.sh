#!/usr/bin/env bash
# build-image.sh OUTDIR: build the Linux guest image (see README.md beside it).
#
# Outputs, each rebuilt only when its inputs changed:
#   OUTDIR/cache/<kernel package>.deb   the downloaded kernel package
#   OUTDIR/kernel/                      the package unpacked, with modules.dep
#   OUTDIR/kernel-version               its version string (uname -r)
#   OUTDIR/vmlinuz                      the bzImage
#   OUTDIR/vmlinux                      the same kernel uncompressed (a PVH ELF, for Xen mode)
#   OUTDIR/initramfs.cpio.gz            busybox, /init, modules (newc, gzip)
#
# Environment:
#   NH_KERNEL_PKG      package[=version] (default linux-image-6.1.0-57-cloud-amd64=6.1.192-3);
#                      a pinned version missing from the archive falls back to the candidate
#   NH_EXTRA_MODULES   more modules for the initramfs, space-separated names
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() { echo "build-image: $*" >&2; exit 1; }
log() { echo "build-image: $*"; }

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
mkdir -p "$1"
out=$(cd "$1" && pwd)

spec=${NH_KERNEL_PKG:-linux-image-6.1.0-57-cloud-amd64=6.1.192-3}
pkg=${spec%%=*}
pin=
[ "$pkg" != "$spec" ] && pin=${spec#*=}
modules="ena xen-blkfront xen-netfront ${NH_EXTRA_MODULES:-}"

# One build per OUTDIR at a time.
exec 9>"$out/.lock"
flock 9

# --- tools -----------------------------------------------------------------
need_pkgs=()
command -v depmod >/dev/null || need_pkgs+=(kmod)
command -v cpio >/dev/null || need_pkgs+=(cpio)
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
    need_pkgs+=(busybox-static) # a dynamic busybox would need its libraries
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing packages: ${need_pkgs[*]} (apt-get install them)"
    log "installing ${need_pkgs[*]}"
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq "${need_pkgs[@]}" >/dev/null; } ||
        die "apt-get install ${need_pkgs[*]} failed"
fi
command -v cc >/dev/null || die "no C compiler (cc) for the outb helper"

# --- kernel package ----------------------------------------------------------
cache=$out/cache
mkdir -p "$cache"

find_deb() { # $1: version or empty for any; prints the newest match
    local pattern="${pkg}_${1:-*}_*.deb"
    (cd "$cache" && ls -t $pattern 2>/dev/null | head -n 1) || true
}

download() { # $1: apt spec
    local tmp
    tmp=$(mktemp -d "$cache/.dl.XXXXXX")
    if (cd "$tmp" && apt-get download -qq "$1" 2>"$tmp/err") ||
        { [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1 &&
            (cd "$tmp" && apt-get download -qq "$1" 2>"$tmp/err"); }; then
        mv "$tmp"/*.deb "$cache/"
        rm -rf "$tmp"
        return 0
    fi
    grep -v 'unsandboxed' "$tmp/err" >&2 || true
    rm -rf "$tmp"
    return 1
}

deb=$(find_deb "$pin")
if [ -z "$deb" ]; then
    log "downloading $spec"
    if download "$spec"; then
        deb=$(find_deb "$pin")
    elif [ -n "$pin" ]; then
        log "warning: $pkg=$pin is not in the archive; taking the candidate version"
        download "$pkg" || die "apt-get download $pkg failed"
        deb=$(find_deb "")
    else
        die "apt-get download $pkg failed"
    fi
fi
[ -n "$deb" ] || die "no $pkg package in $cache"
deb_path=$cache/$deb

# --- unpacked kernel with modules.dep ----------------------------------------
kdir=$out/kernel
deb_id="$deb $(stat -c %s "$deb_path")"
if [ "$(cat "$kdir/.from" 2>/dev/null)" != "$deb_id" ] || [ ! -s "$out/kernel-version" ]; then
    log "unpacking $deb"
    rm -rf "$kdir.tmp"
    dpkg -x "$deb_path" "$kdir.tmp"
    if [ ! -d "$kdir.tmp/lib/modules" ] && [ -d "$kdir.tmp/usr/lib/modules" ]; then
        ln -s usr/lib "$kdir.tmp/lib" # merged-/usr packages
    fi
    kver=$(ls "$kdir.tmp/lib/modules")
    [ "$(echo "$kver" | wc -w)" = 1 ] || die "expected one kernel in $deb, found: $kver"
    [ -f "$kdir.tmp/boot/vmlinuz-$kver" ] || die "no boot/vmlinuz-$kver in $deb"
    depmod -b "$kdir.tmp" "$kver"
    echo "$deb_id" >"$kdir.tmp/.from"
    rm -rf "$kdir"
    mv "$kdir.tmp" "$kdir"
    echo "$kver" >"$out/kernel-version"
fi
kver=$(cat "$out/kernel-version")
moddir=$kdir/lib/modules/$kver

if ! cmp -s "$kdir/boot/vmlinuz-$kver" "$out/vmlinuz"; then
    cp "$kdir/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
    mv "$out/vmlinuz.tmp" "$out/vmlinuz"
fi

# --- vmlinux: the uncompressed kernel, a PVH ELF ---------------------------------
# Xen mode loads it directly, so that the vmm can find and rewrite the kernel's hypercall
# instructions before the guest runs (docs/platform.md). The compressed payload's place is in
# the bzImage header (payload_offset, payload_length), relative to the protected-mode code.
if [ ! -s "$out/vmlinux" ] || [ "$out/vmlinuz" -nt "$out/vmlinux" ]; then
    le32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
    setup_sects=$(od -An -tu1 -j 0x1f1 -N1 "$out/vmlinuz" | tr -d ' ')
    [ "$setup_sects" = 0 ] && setup_sects=4
    pm_start=$(((setup_sects + 1) * 512))
    poff=$(le32 "$out/vmlinuz" $((0x248)))
    plen=$(le32 "$out/vmlinuz" $((0x24c)))
    [ "$poff" -gt 0 ] && [ "$plen" -gt 0 ] || die "$out/vmlinuz has no payload_offset/payload_length"
    dd if="$out/vmlinuz" of="$out/payload.tmp" iflag=skip_bytes,count_bytes bs=1M \
        skip=$((pm_start + poff)) count="$plen" status=none
    magic=$(od -An -tx1 -N6 "$out/payload.tmp" | tr -d ' \n')
    case "$magic" in
    02214c18*) tool="lz4 -dc" pkgname=lz4 ;;
    fd377a585a00*) tool="xz -dc" pkgname=xz-utils ;;
    1f8b*) tool="gzip -dc" pkgname=gzip ;;
    28b52ffd*) tool="zstd -dcq" pkgname=zstd ;;
    *) die "$out/vmlinuz: unknown payload compression (magic $magic)" ;;
    esac
    if ! command -v "${tool%% *}" >/dev/null; then
        [ "$(id -u)" = 0 ] || die "missing package: $pkgname (apt-get install it)"
        apt-get install -y -qq "$pkgname" >/dev/null || die "apt-get install $pkgname failed"
    fi
    # lz4's legacy frames carry no end mark, so the tool may complain about the size field that
    # follows the payload; the ELF check below decides.
    $tool <"$out/payload.tmp" >"$out/vmlinux.tmp" 2>/dev/null || true
    rm -f "$out/payload.tmp"
    [ "$(head -c 4 "$out/vmlinux.tmp" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] ||
        die "decompressing the payload of $out/vmlinuz did not give an ELF file"
    mv "$out/vmlinux.tmp" "$out/vmlinux"
fi

# --- outb helper --------------------------------------------------------------
work=$out/work
mkdir -p "$work"
if [ ! -x "$work/outb" ] || [ "$here/outb.c" -nt "$work/outb" ]; then
    cc -static -nostdlib -ffreestanding -fno-stack-protector -fno-pie -no-pie -Os \
        -Wl,--build-id=none -s -o "$work/outb" "$here/outb.c"
fi

# --- initramfs -------------------------------------------------------------------
# Modules in load order: modules.dep lists a module's dependencies so that
# loading them from last to first works.
declare -a load_lines=() mod_paths=()
for m in $modules; do
    want=$(echo "$m" | tr _ -)
    line=$(awk -v w="$want" '{ p = $1; sub(/:$/, "", p); n = p; sub(/.*\//, "", n);
        sub(/\.ko(\.[a-z]+)?$/, "", n); gsub(/_/, "-", n); if (n == w) { print; exit } }' \
        "$moddir/modules.dep")
    [ -n "$line" ] || die "module $m is not in $pkg"
    read -r self deps <<<"$line"
    self=${self%:}
    order=""
    for d in $deps; do order="$d $order"; done
    order="$order$self"
    case "$self" in *.ko) ;; *) die "$self is compressed; only plain .ko is supported" ;; esac
    load_lines+=("$want $order")
    for p in $order; do mod_paths+=("$p"); done
done

key=$( {
    echo "$deb_id $kver $modules"
    cat "$here/build-image.sh" "$here/init" "$here/load-modules" "$work/outb" /bin/busybox
} | sha256sum | cut -d' ' -f1)
img=$out/initramfs.cpio.gz
if [ -s "$img" ] && [ "$(cat "$img.key" 2>/dev/null)" = "$key" ]; then
    log "initramfs up to date"
else
    log "building initramfs"
    root=$work/initramfs
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,lib/modules/"$kver"}
    cp /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list-full); do
        [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
    done
    install -m 755 "$here/init" "$root/init"
    install -m 755 "$here/load-modules" "$root/bin/load-modules"
    install -m 755 "$work/outb" "$root/bin/outb"
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
    for p in $(printf '%s\n' "${mod_paths[@]}" | sort -u); do
        mkdir -p "$root/lib/modules/$kver/$(dirname "$p")"
        cp "$moddir/$p" "$root/lib/modules/$kver/$p"
    done
    printf '%s\n' "${load_lines[@]}" >"$root/lib/modules/$kver/modules.load"
    # A modules.dep limited to what is in the image lets busybox modprobe work too.
    for p in $(printf '%s\n' "${mod_paths[@]}" | sort -u); do
        grep "^$p:" "$moddir/modules.dep"
    done >"$root/lib/modules/$kver/modules.dep"
    echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
    echo "root:x:0:" >"$root/etc/group"
    find "$root" -exec touch -h -d @0 {} +
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
        cpio -o -H newc -R 0:0 --reproducible --quiet) | gzip -9 -n >"$img.tmp"
    mv "$img.tmp" "$img"
    echo "$key" >"$img.key"
fi

size() { awk -v s="$(stat -c %s "$1")" 'BEGIN { printf "%7.2f MiB", s / 1048576 }'; }
echo "build-image: kernel $kver from $deb"
printf '  %s  %s\n' "$(size "$out/vmlinuz")" "$out/vmlinuz"
printf "  %s  %s\n" "$(size "$out/vmlinux")" "$out/vmlinux"
printf '  %s  %s\n' "$(size "$img")" "$img"
printf '  modules (load order): %s\n' "$(printf '%s; ' "${load_lines[@]}")"
