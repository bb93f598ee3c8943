# Shared helpers of Corral's busybox OS scripts (sourced, not run). POSIX sh.
#
# Every script: prints its usage on -h/--help (exit 0) and on unexpected arguments (exit 1),
# writes progress to stdout and errors to stderr (both end up in the OS log file on the node),
# and traces its commands when DEBUG_LEVEL is 1 or more.

log() { echo "busybox-os: $*"; }
die() { echo "busybox-os: error: $*" >&2; exit 1; }

# usage SCRIPT: one line per script, in the terms of the Ganeti OS interface.
usage() {
    case "$1" in
        create) echo "usage: create (no arguments; Ganeti OS API 20 environment: INSTANCE_NAME, DISK_0_PATH, ...)" ;;
        rename) echo "usage: rename (no arguments; INSTANCE_NAME, OLD_INSTANCE_NAME, DISK_0_PATH)" ;;
        export) echo "usage: export (no arguments; EXPORT_DEVICE or EXPORT_DISK_PATH; dump on stdout)" ;;
        import) echo "usage: import (no arguments; IMPORT_DEVICE or IMPORT_DISK_PATH; dump on stdin)" ;;
        verify) echo "usage: verify parameters (checks the OSP_* variables)" ;;
    esac
}

# no_args SCRIPT "$@": scripts called by Corral/Ganeti without arguments.
no_args() {
    _script=$1
    shift
    case "$#:${1:-}" in
        0:) ;;
        1:-h|1:--help) usage "$_script"; exit 0 ;;
        *) usage "$_script" >&2; exit 1 ;;
    esac
}

debug_trace() {
    if [ "${DEBUG_LEVEL:-0}" -ge 1 ] 2>/dev/null; then set -x; fi
}

# check_params: validate the OS parameters (OSP_*); prints the problem and returns 1 if bad.
check_params() {
    _ok=0
    if [ -n "${OSP_DNS_NAMESERVERS:-}" ]; then
        _old_ifs=$IFS
        IFS=,
        for _ns in $OSP_DNS_NAMESERVERS; do
            if ! is_ip "$_ns"; then
                echo "dns_nameservers: not an IP address: '$_ns'" >&2
                _ok=1
            fi
        done
        IFS=$_old_ifs
    fi
    return $_ok
}

is_ip() {
    case "$1" in
        "" | *[!0-9a-fA-F.:]*) return 1 ;;
        *:*) return 0 ;;  # IPv6 (hex digits and colons)
    esac
    echo "$1" | grep -Eq '^(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])){3}$'
}

# need_disk0: the root disk is disk 0.
need_disk0() {
    [ "${DISK_COUNT:-0}" -ge 1 ] 2>/dev/null || die "this OS needs at least one disk (DISK_COUNT=${DISK_COUNT:-unset})"
    [ -n "${DISK_0_PATH:-}" ] || die "DISK_0_PATH is not set"
    [ -e "$DISK_0_PATH" ] || die "disk 0 ($DISK_0_PATH) does not exist"
}

# write_etc_files DIR NAME: /etc/hostname and /etc/hosts for instance NAME into DIR.
write_etc_files() {
    printf '%s\n' "$2" > "$1/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$2" > "$1/hosts"
    chmod 0644 "$1/hostname" "$1/hosts"
}
