#!/usr/bin/env bash
# Builds qemu-system-x86_64 (with the vfio-user client) from Debian's QEMU source package,
# applying every patch in this folder, and collects the firmware it needs at run time.
#
# Usage: build-qemu.sh OUT_PARENT KEY
#   Picks the newest QEMU >= 10.1 whose source Debian serves (sid, forky, trixie-backports,
#   trixie, bookworm-backports) and that has the vfio-user client and takes our patches, then
#   builds it into OUT_PARENT/<version>-KEY: bin/qemu-system-x86_64 and fw/ (pass it to QEMU
#   with -L). Prints "::version V" and, last, "::built DIR".
#
# Called by `testbed qemu`, which logs everything and turns the "::step NAME" lines into
# progress. Safe to rerun: it starts over in a .work folder and only puts the result in place
# when the build succeeded. Needs root (or sudo) only to install missing Debian build packages.
set -euo pipefail
exec 2>&1

parent=${1:?usage: build-qemu.sh OUT_PARENT KEY}
key=${2:?usage: build-qemu.sh OUT_PARENT KEY}
here=$(cd "$(dirname "$0")" && pwd)
work="$parent/build-$key.work"
jobs=$(nproc 2>/dev/null || echo 2)

step() { echo "::step $*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: need root to run: $*" >&2; exit 1; fi; }

step "install build packages"
need=()
for p in ninja-build libglib2.0-dev libpixman-1-dev flex bison zlib1g-dev python3-venv pkg-config \
    bzip2 dpkg-dev xz-utils libattr1-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi

rm -rf "$work"
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial"
for suite in sid forky trixie-backports trixie bookworm-backports; do
    echo "deb-src http://deb.debian.org/debian $suite main"
done > "$work/apt/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache"
    -o "APT::Sandbox::User=root" -o "Acquire::Retries=2")

step "find QEMU sources"
apt-get "${apt_opts[@]}" update -q || echo "warning: some suites could not be read; using the others"
# Every version of the source package any suite lists, newest first, 10.1 or newer.
mapfile -t listed < <(apt-cache "${apt_opts[@]}" showsrc qemu 2>/dev/null |
    sed -n 's/^Version: //p' | sort -u)
candidates=()
for v in "${listed[@]}"; do
    dpkg --compare-versions "$v" ge "1:10.1~" || continue
    i=${#candidates[@]}
    candidates+=("$v")
    while [ "$i" -gt 0 ] && dpkg --compare-versions "${candidates[$((i - 1))]}" lt "$v"; do
        candidates[$i]=${candidates[$((i - 1))]}
        candidates[$((i - 1))]=$v
        i=$((i - 1))
    done
done
echo "QEMU source versions >= 10.1 listed: ${candidates[*]:-none}"
version=""
why=()
for v in "${candidates[@]}"; do
    dl="$work/dl-${v//[:~+]/_}"
    mkdir -p "$dl"
    if ! (cd "$dl" && apt-get "${apt_opts[@]}" source --download-only "qemu=$v" >"$dl.log" 2>&1); then
        why+=("$v: the archive lists it but does not serve its files ($(grep -m1 -o '[0-9]\{3\}  *[A-Za-z ]*' "$dl.log" || echo 'download failed'))")
        rm -rf "$dl"
        continue
    fi
    if ! (cd "$dl" && dpkg-source -x ./*.dsc "$dl/src" >/dev/null 2>>"$dl.log"); then
        why+=("$v: the source does not unpack (see $dl.log)")
        rm -rf "$dl"
        continue
    fi
    if [ ! -d "$dl/src/hw/vfio-user" ]; then
        why+=("$v: the source has no vfio-user client (hw/vfio-user)")
        rm -rf "$dl"
        continue
    fi
    bad=""
    for p in "$here"/*.patch; do
        patch -p1 -N --dry-run -s -d "$dl/src" < "$p" >/dev/null 2>&1 && continue
        patch -p1 -R --dry-run -s -d "$dl/src" < "$p" >/dev/null 2>&1 && continue
        bad="$(basename "$p")"
        break
    done
    if [ -n "$bad" ]; then
        why+=("$v: patch $bad neither applies nor is already in it")
        rm -rf "$dl"
        continue
    fi
    version=$v
    src="$dl/src"
    break
done
if [ -z "$version" ]; then
    echo "error: no QEMU source >= 10.1 with the vfio-user client could be had from Debian's archive"
    for w in "${why[@]}"; do echo "  - $w"; done
    [ ${#candidates[@]} -gt 0 ] || echo "  (no suite lists qemu >= 10.1; is deb.debian.org reachable?)"
    echo "install a qemu-system-x86_64 >= 10.1 that lists vfio-user-pci and name it with \$QEMU"
    exit 1
fi
echo "::version $version"
echo "using QEMU $version"
out="$parent/${version//[:~+]/_}-$key"

step "fetch meson wheels"
# The +ds tarball lacks python/wheels and Debian 12's meson is too old for 10.2.
python3 -m pip download -q meson==1.9.0 pycotap==1.3.1 -d "$src/python/wheels"

step "apply patches"
for p in "$here"/*.patch; do
    if patch -p1 -N --dry-run -s -d "$src" < "$p" >/dev/null 2>&1; then
        echo "applying $(basename "$p")"
        patch -p1 -N -d "$src" < "$p"
    else
        echo "skipping $(basename "$p"): QEMU $version already has it"
    fi
done
cp "$here/testbed-devices.mak" "$src/configs/devices/x86_64-softmmu/testbed.mak"

step "configure"
mkdir -p "$src/build"
(cd "$src/build" && ../configure --target-list=x86_64-softmmu --without-default-features \
    --without-default-devices --with-devices-x86_64=testbed --enable-kvm --enable-tcg \
    --enable-pixman --disable-fdt -Dwrap_mode=nodownload --disable-docs --disable-werror \
    --disable-debug-info --disable-user --disable-tools --disable-guest-agent \
    --disable-install-blobs --enable-vhost-user --enable-vhost-net --enable-virtfs --enable-attr)

step "compile ($jobs jobs)"
ninja -C "$src/build" -j "$jobs" qemu-system-x86_64

step "firmware"
# The +ds source has no blobs; Debian 12's seabios and qemu-system-data carry them.
mkdir -p "$work/fwdl"
(cd "$work/fwdl" && apt-get download -q seabios qemu-system-data)
mkdir -p "$work/fwpkg" "$work/out/bin" "$work/out/fw"
for deb in "$work"/fwdl/*.deb; do dpkg -x "$deb" "$work/fwpkg"; done
for f in bios-256k.bin kvmvapic.bin linuxboot_dma.bin pvh.bin; do
    found=$(find -L "$work/fwpkg" -name "$f" -type f | head -n 1)
    [ -n "$found" ] || { echo "error: firmware $f not found in seabios/qemu-system-data" >&2; exit 1; }
    cp "$found" "$work/out/fw/$f"
done

step "install"
cp "$src/build/qemu-system-x86_64" "$work/out/bin/"
"$work/out/bin/qemu-system-x86_64" -device help | grep -q vfio-user-pci ||
    { echo "error: built QEMU lacks vfio-user-pci" >&2; exit 1; }
rm -rf "$out"
mv "$work/out" "$out"
rm -rf "$work"
echo "::built $out"
