#!/usr/bin/env bash
# Builds qemu-system-x86_64 (with the vfio-user client) from Debian's QEMU source package,
# applying every patch in this folder, and collects the firmware it needs at run time.
#
# Usage: build-qemu.sh OUT_DIR QEMU_DEBIAN_VERSION
#   OUT_DIR gets bin/qemu-system-x86_64 and fw/ (pass it to QEMU with -L).
#
# Called by `testbed qemu`, which logs everything and turns the "::step NAME" lines into
# progress. Safe to rerun: it starts over in OUT_DIR.work and only replaces OUT_DIR when the
# build succeeded. Needs root (or sudo) only to install missing Debian build packages.
set -euo pipefail
exec 2>&1

out=${1:?usage: build-qemu.sh OUT_DIR QEMU_DEBIAN_VERSION}
version=${2:?usage: build-qemu.sh OUT_DIR QEMU_DEBIAN_VERSION}
here=$(cd "$(dirname "$0")" && pwd)
work="$out.work"
jobs=$(nproc 2>/dev/null || echo 2)

step() { echo "::step $*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: need root to run: $*" >&2; exit 1; fi; }

step "install build packages"
need=()
for p in ninja-build libglib2.0-dev libpixman-1-dev flex bison zlib1g-dev python3-venv pkg-config \
    bzip2 dpkg-dev xz-utils; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi

rm -rf "$work"
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/dl"
echo "deb-src http://deb.debian.org/debian sid main" > "$work/apt/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache"
    -o "APT::Sandbox::User=root")

step "download QEMU source $version"
apt-get "${apt_opts[@]}" update -q
(cd "$work/dl" && apt-get "${apt_opts[@]}" source --download-only "qemu=$version")

step "unpack source"
(cd "$work/dl" && dpkg-source -x ./*.dsc "$work/src" >/dev/null)
src="$work/src"

step "fetch meson wheels"
# The +ds tarball lacks python/wheels and Debian 12's meson is too old for 10.2.
python3 -m pip download -q meson==1.9.0 pycotap==1.3.1 -d "$src/python/wheels"

step "apply patches"
for p in "$here"/*.patch; do
    echo "applying $(basename "$p")"
    patch -p1 -d "$src" < "$p"
done
cp "$here/testbed-devices.mak" "$src/configs/devices/x86_64-softmmu/testbed.mak"

step "configure"
mkdir -p "$src/build"
(cd "$src/build" && ../configure --target-list=x86_64-softmmu --without-default-features \
    --without-default-devices --with-devices-x86_64=testbed --enable-kvm --enable-tcg \
    --enable-pixman --disable-fdt -Dwrap_mode=nodownload --disable-docs --disable-werror \
    --disable-debug-info --disable-user --disable-tools --disable-guest-agent \
    --disable-install-blobs --enable-vhost-user --enable-vhost-net)

step "compile ($jobs jobs)"
ninja -C "$src/build" -j "$jobs" qemu-system-x86_64

step "firmware"
# The +ds source has no blobs; Debian 12's seabios and qemu-system-data carry them.
(cd "$work/dl" && apt-get download -q seabios qemu-system-data)
mkdir -p "$work/fwpkg" "$work/out/bin" "$work/out/fw"
for deb in "$work"/dl/*.deb; do dpkg -x "$deb" "$work/fwpkg"; done
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
echo "built $out/bin/qemu-system-x86_64"
