#!/bin/bash
# build.sh OUTDIR: build the Xen test appliance (a Debian 12 dom0 image with Xen 4.17).
#
# Output in OUTDIR:
#   boot/xen          the Xen hypervisor (gunzipped: QEMU's multiboot loader needs it plain)
#   boot/vmlinuz      the dom0 kernel (Debian's linux-image-amd64)
#   boot/initrd.img   its initramfs (initramfs-tools)
#   rootfs.img        ext4 image of the dom0 root (3 GiB, sparse): Xen tools, qemu-system-xen,
#                     python3 + /opt/corral-venv (Corral's runtime dependencies, installed
#                     offline from a wheelhouse built here), the busybox OS's guest kernel
#                     .deb in /var/cache/corral/busybox, and /sbin/corral-boot (PID 1: mounts
#                     the config disk and runs the dom0-init it carries; see dom0-boot)
#   stamp             hash of the build inputs; a rebuild happens only when it changes
#   build.log         the build's log (debootstrap, apt, pip)
#
# Inputs hashed into the stamp: this script, dom0-boot, the dependency list of pyproject.toml
# and the name of the guest kernel .deb. The dom0 init proper (dom0-init) and the test agent
# are not in the image: the test fixture puts them on the config disk with Corral's source,
# so changing them needs no rebuild.
#
# Needs (host, root): debootstrap, chroot, e2fsprogs (mke2fs -d), python3 venv with pip
# (/work/main/.venv or $PYTHON), network access to deb.debian.org and PyPI, and the busybox
# OS kernel cache (`make kernel` fills .cache/busybox). Environment: MIRROR (default
# http://deb.debian.org/debian), KERNEL_CACHE (default <repo>/.cache/busybox), PYTHON (the
# host python used for `pip download`, default <repo>/.venv/bin/python).
# Exit status 0 when OUTDIR is up to date or was rebuilt; non-zero with a message otherwise
# (OUTDIR keeps its previous content until the new image is complete).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
OUT=$1
MIRROR=${MIRROR:-http://deb.debian.org/debian}
KERNEL_CACHE=${KERNEL_CACHE:-$REPO/.cache/busybox}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
[ "$(id -u)" = 0 ] || { echo "build.sh: needs root (debootstrap, chroot)" >&2; exit 1; }
for t in debootstrap chroot mke2fs sha256sum; do
    command -v "$t" >/dev/null || { echo "build.sh: $t not found" >&2; exit 1; }
done
[ -x "$PYTHON" ] || { echo "build.sh: $PYTHON not found (make venv)" >&2; exit 1; }

die() { echo "build.sh: $*" >&2; exit 1; }
T0=$(date +%s)
ts() { echo "[xen-appliance +$(($(date +%s) - T0))s] $*"; }

# The busybox OS's guest kernel: dom0 has no network, so its cache must hold the .deb.
KDEB=$(ls -t "$KERNEL_CACHE"/linux-image-*-cloud-amd64_*.deb 2>/dev/null | head -n 1 || true)
[ -n "$KDEB" ] || die "no guest kernel .deb in $KERNEL_CACHE (run make kernel)"

DEPS=$("$PYTHON" -c '
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))
' "$REPO/pyproject.toml")

STAMP=$( { cat "$HERE/build.sh" "$HERE/dom0-boot"; echo "$DEPS"; basename "$KDEB"; } | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$STAMP" ] && [ -f "$OUT/rootfs.img" ] \
    && [ -f "$OUT/boot/xen" ] && [ -f "$OUT/boot/vmlinuz" ] && [ -f "$OUT/boot/initrd.img" ]; then
    echo "xen-appliance: $OUT is up to date ($STAMP)"
    exit 0
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
W="$OUT/work"
ROOT="$W/root"
cleanup() {
    # never leave mounts behind in the chroot
    for m in "$ROOT/proc" "$ROOT/sys" "$ROOT/dev/pts" "$ROOT/dev"; do
        if grep -q " $m " /proc/mounts 2>/dev/null; then umount -l "$m" || true; fi
    done
    rm -rf "$W"
}
trap cleanup EXIT
rm -rf "$W"
mkdir -p "$W"
LOG="$OUT/build.log"
: > "$LOG"
ts "building into $OUT (log $LOG)"

# 1. the dom0 root filesystem
PKGS=xen-hypervisor-4.17-amd64,xen-utils-4.17,xen-utils-common,xenstore-utils,linux-image-amd64
PKGS=$PKGS,initramfs-tools,kmod,udev,iproute2,busybox-static,procps,util-linux,e2fsprogs,cpio
PKGS=$PKGS,dpkg,xz-utils,python3,python3-venv,ca-certificates
debootstrap --variant=minbase --include="$PKGS" bookworm "$ROOT" "$MIRROR" >>"$LOG" 2>&1 \
    || die "debootstrap failed (see $LOG)"
ts "debootstrap done"

# 2. qemu-system-xen (qdisk backend for file: disks, HVM device model) through apt in the chroot
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mount -t proc proc "$ROOT/proc"
DEBIAN_FRONTEND=noninteractive chroot "$ROOT" apt-get install -y -q --no-install-recommends \
    qemu-system-xen qemu-utils >>"$LOG" 2>&1 || die "apt-get install qemu-system-xen failed (see $LOG)"
umount "$ROOT/proc"
rm -f "$ROOT/etc/resolv.conf"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
ts "qemu-system-xen installed"

# 3. Corral's runtime dependencies: a wheelhouse built here, installed offline in the chroot
WH="$ROOT/tmp/wheelhouse"
mkdir -p "$WH"
echo "$DEPS" > "$WH/requirements.txt"
"$PYTHON" -m pip download -q --dest "$WH" --only-binary=:all: --implementation cp \
    --python-version 3.11 --abi cp311 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any \
    -r "$WH/requirements.txt" >>"$LOG" 2>&1 || die "pip download failed (see $LOG)"
chroot "$ROOT" python3 -m venv /opt/corral-venv >>"$LOG" 2>&1 || die "python3 -m venv failed"
chroot "$ROOT" /opt/corral-venv/bin/pip install -q --no-index --find-links /tmp/wheelhouse \
    -r /tmp/wheelhouse/requirements.txt >>"$LOG" 2>&1 || die "pip install (offline) failed (see $LOG)"
rm -rf "$WH"
ts "venv /opt/corral-venv ready ($(ls "$ROOT"/opt/corral-venv/lib/python3*/site-packages | wc -l) entries)"

# 4. the busybox OS kernel cache (paths.cache_dir/busybox of a node rooted at /)
mkdir -p "$ROOT/var/cache/corral/busybox"
cp "$KDEB" "$ROOT/var/cache/corral/busybox/"

# 5. the boot stage (PID 1) and a few files
install -m 0755 "$HERE/dom0-boot" "$ROOT/sbin/corral-boot"
echo xen1 > "$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n' > "$ROOT/etc/hosts"
mkdir -p "$ROOT/var/log/xen/console" "$ROOT/var/lib/xen" "$ROOT/etc/xen"

# 6. boot files and the image
KVER=$(ls "$ROOT/lib/modules" | head -n 1)
mkdir -p "$W/boot"
gunzip -c "$ROOT"/boot/xen-4.17-amd64.gz > "$W/boot/xen" 2>/dev/null \
    || gunzip -c "$(ls "$ROOT"/boot/xen-4.17*.gz | head -n 1)" > "$W/boot/xen"
cp "$ROOT/boot/vmlinuz-$KVER" "$W/boot/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$W/boot/initrd.img"
rm -f "$W/rootfs.img"
mke2fs -q -F -t ext4 -L corral-dom0 -d "$ROOT" "$W/rootfs.img" 3G >>"$LOG" 2>&1 \
    || die "mke2fs failed (see $LOG)"
ts "image written ($(du -h "$W/rootfs.img" | cut -f1) used of 3G); dom0 kernel $KVER"

# 7. swap the new files in (the old image stays usable until here)
rm -rf "$OUT/boot"
mv "$W/boot" "$OUT/boot"
mv -f "$W/rootfs.img" "$OUT/rootfs.img"
echo "$STAMP" > "$OUT/stamp"
ts "done in $(($(date +%s) - T0)) s"
echo "build time: $(($(date +%s) - T0)) s" >> "$LOG"
