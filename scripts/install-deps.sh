#!/bin/sh
# Install the Debian packages Corral's demo and tests need (scripts/system-packages.txt).
# Runs apt-get update only when a package cannot be found. Needs root (or sudo).
set -eu
cd "$(dirname "$0")"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
PKGS=$(grep -v '^#' system-packages.txt | tr '\n' ' ')
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -n "$missing" ] || exit 0
echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q --no-install-recommends $missing >/tmp/corral-apt.log 2>&1; then
    $SUDO apt-get update -q >/tmp/corral-apt-update.log 2>&1 || { cat /tmp/corral-apt-update.log; exit 1; }
    $SUDO apt-get install -y -q --no-install-recommends $missing || exit 1
fi
