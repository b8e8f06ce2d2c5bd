#!/bin/sh
# An LBNL NHC-style node check for startd-health's site checks (Nagios
# protocol): each check gathers one fact and judges it; the first failure
# ends the script with CRITICAL and its reason (the node then refuses new
# jobs), else OK with a count as performance data. POSIX sh only, so that it
# runs wherever a STARTD_CRON job runs.
#
#   STARTD_HEALTH_SITE_CHECKS = node
#   STARTD_HEALTH_SITE_CHECK_NODE = /usr/libexec/startd-health/nhc-style-check.sh -m / -w /var/lib/condor/execute -p condor_startd -F /etc/nologin
#
# usage: nhc-style-check.sh [-m MOUNT] [-r MOUNT] [-w DIR] [-p NAME] [-f FILE] [-F FILE] ...
#   -m MOUNT  MOUNT is a mount point (in /proc/mounts)
#   -r MOUNT  MOUNT is mounted read-write
#   -w DIR    a file can be created (and removed) in DIR
#   -p NAME   a process called NAME runs
#   -f FILE   FILE exists
#   -F FILE   FILE does not exist (a "drain me" flag an admin or another tool drops)
# Exit: 0 OK, 2 CRITICAL (a check failed), 3 UNKNOWN (bad usage).

checked=0

die() { echo "CRITICAL: $*"; exit 2; }
unknown() { echo "UNKNOWN: $*"; exit 3; }

# Mount options of a mount point ("" when not mounted): the fourth field of /proc/mounts.
mount_options() { awk -v m="$1" '$2 == m { o = $4 } END { print o }' /proc/mounts; }

check_fs_mount() {
    [ -n "$(mount_options "$1")" ] || die "$1 is not mounted"
}

check_fs_mount_rw() {
    options=$(mount_options "$1")
    [ -n "$options" ] || die "$1 is not mounted"
    case ",$options," in *,ro,*) die "$1 is mounted read-only" ;; esac
}

check_dir_writable() {
    probe="$1/.startd-health-nhc.$$"
    ( : > "$probe" ) 2>/dev/null || die "cannot create a file in $1"
    rm -f "$probe"
}

check_ps_daemon() {
    for stat in /proc/[0-9]*/stat; do
        read -r line < "$stat" 2>/dev/null || continue
        name=${line#*(}; name=${name%%)*}
        [ "$name" = "$1" ] && return 0
    done
    die "no $1 process"
}

check_file_test() { [ -e "$1" ] || die "$1 is missing"; }
check_file_absent() { [ ! -e "$1" ] || die "$1 exists: $(head -c 200 "$1" 2>/dev/null | tr '\n' ' ')"; }

while getopts "m:r:w:p:f:F:" option; do
    case $option in
        m) check_fs_mount "$OPTARG" ;;
        r) check_fs_mount_rw "$OPTARG" ;;
        w) check_dir_writable "$OPTARG" ;;
        p) check_ps_daemon "$OPTARG" ;;
        f) check_file_test "$OPTARG" ;;
        F) check_file_absent "$OPTARG" ;;
        *) unknown "usage: $0 [-m MOUNT] [-r MOUNT] [-w DIR] [-p NAME] [-f FILE] [-F FILE] ..." ;;
    esac
    checked=$((checked + 1))
done
[ "$checked" -gt 0 ] || unknown "no check given (see the usage at the top of $0)"
echo "OK: $checked checks passed | checks=$checked;;;0"
