#!/bin/sh
# The main job of `make demo`: a single-host Corral cluster on this machine, and a real QEMU
# guest installed from the built-in busybox OS and booted by it.
#
#   scripts/demo.sh           init the cluster (or reuse it), (re)create demo1, boot it
#   scripts/demo.sh --clean   remove demo1, stop the daemons, destroy the cluster
#
# Runs as root (QEMU, /var/lib/corral, /srv/corral). CORRAL_ROOT relocates every file.
set -eu
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
ROOT=${CORRAL_ROOT:-/}
CONF="$ROOT/var/lib/corral/cluster.json"
VM=demo1

say() { printf '\n==> %s\n' "$*"; }

exists() {
    corral --output json instance list -o name | python3 -c \
        'import json,sys; sys.exit(0 if any(r["name"] == sys.argv[1] for r in json.load(sys.stdin)) else 1)' "$1"
}

if [ "${1:-}" = "--clean" ]; then
    if [ -f "$CONF" ]; then
        corral daemons start >/dev/null
        if exists "$VM"; then corral instance remove -f "$VM"; fi
        corral cluster destroy --yes-do-it
    fi
    exit 0
fi

if [ -f "$CONF" ]; then
    say "reusing the cluster in $ROOT (make demo-clean removes it)"
    corral daemons start
else
    say "initialising a single-host cluster (SQLite store, KVM and fake hypervisors)"
    corral cluster init --enabled-hypervisors kvm,fake \
        --file-storage-dir "${ROOT%/}/srv/corral/disks" \
        --node-address 127.0.0.1 --rapi-bind 127.0.0.1 demo-cluster
fi
corral daemons status

if exists "$VM"; then
    say "removing the previous $VM"
    corral instance remove -f "$VM"
fi

say "adding $VM: a 512M file disk, the busybox OS (Debian's cloud kernel), 256M of memory"
corral instance add -t file --disk 0:size=512M -o busybox -B maxmem=256M,minmem=128M,vcpus=1 "$VM"

say "waiting for the guest's console to show it is up"
LOG=$(corral --output json instance info "$VM" | python3 -c \
    'import json,sys; print(json.load(sys.stdin)["hv_runtime"]["serial_log"])')
i=0
until grep -a -q "CORRAL-GUEST-UP $VM" "$LOG" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 600 ]; then
        echo "the guest did not come up within 120s; its console log ($LOG):" >&2
        tail -n 30 "$LOG" >&2 || true
        exit 1
    fi
    sleep 0.2
done
echo "console: $(grep -a "CORRAL-GUEST-UP $VM" "$LOG" | tail -n 1)"

say "corral instance list"
corral instance list
say "corral instance info $VM"
corral instance info "$VM"
say "done: try 'corral instance console $VM' (leave with Ctrl-]); see README.md"
