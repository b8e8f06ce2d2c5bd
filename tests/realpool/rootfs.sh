#!/bin/bash
# rootfs.sh - build and enter the Debian root filesystems of the end-to-end
# tests: those in which they run a REAL HTCondor personal pool and REAL
# Apptainer, and a bare Debian bullseye (Python 3.9) for the unit tests.
#
# usage (as root):  rootfs.sh build|enter CMD...|path|pack|unpack
# env:
#   STARTD_HEALTH_CACHE  cache dir (default ${XDG_CACHE_HOME:-~/.cache}/startd-health)
#   VARIANT=mix|sid|py39 mix: trixie (condor 23.9) + apptainer from sid; sid: condor 25.x;
#                        py39: bullseye minbase + python3 + python3-venv, nothing
#                        else (Python 3.9 = EL9's system Python): everything more
#                        must come from the project's own ./dev and
#                        tests/host-packages.txt (tests/e2e/test_python39.py)
#   INSTANCE=NAME        a separate copy of the built root filesystem (its own
#                        config and pool), made from the base one; lets
#                        several pools run side by side
#   REBUILD=1            rebuild the root filesystem (downloaded .debs are kept)
#
# Why this shape (each point was a failure once):
#  * pivot_root, not chroot: the kernel refuses unshare(CLONE_NEWUSER) to a
#    chrooted process, which breaks unprivileged Apptainer and the startd's
#    own Singularity self-test.
#  * a private /dev with /dev/fuse 0666: unprivileged squashfuse needs it and
#    the host's /dev/fuse must not be touched.
#  * Debian ships no exit_37.sif: without it the startd's SIF self-test fails.
#  * "root default capabilities = no": this host's bounding set lacks
#    CAP_SYS_RESOURCE, so root Apptainer would fail to start.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE_ROOT=${STARTD_HEALTH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/startd-health}
VARIANT=${VARIANT:-mix}
BASE_ROOTFS=$CACHE_ROOT/rootfs-$VARIANT
ROOTFS=$BASE_ROOTFS${INSTANCE:+-$INSTANCE}
DEBS=$CACHE_ROOT/debs-$VARIANT
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# Bump when the package list or the configuration below changes: a cached
# root filesystem with another stamp is rebuilt.
FIXTURE_VERSION=3
case $VARIANT in
  mix|sid)
    PKGS=condor,apptainer,python3,python3-venv,python3-setuptools,python3-pip,python3-pytest,python3-psutil,python3-numpy,python3-prometheus-client,python3-apscheduler,squashfs-tools,squashfuse,fuse2fs,fuse3,busybox-static,procps,attr
    KEY= ;;
  py39)
    PKGS=python3,python3-venv
    # What ./dev installs in it comes from the test suite's declaration of
    # host packages: when that changes, the root filesystem starts afresh
    # (an old install must not hide a missing one).
    KEY=-$("$HERE/../host-packages.sh" list unit | sha256sum | cut -c1-12) ;;
  *) echo "rootfs.sh: VARIANT must be mix, sid or py39, not '$VARIANT'" >&2; exit 2 ;;
esac
STAMP=.fixture-$FIXTURE_VERSION$KEY

log() { printf '[rootfs %s %(%H:%M:%S)T] %s\n' "$VARIANT" -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

enter() {
  [ -e "$ROOTFS/$STAMP" ] || die "root filesystem $ROOTFS is not built (run: $0 build)"
  [ $# -gt 0 ] || set -- /bin/bash
  exec unshare --mount --propagation private -- /bin/sh -c '
set -e
R="$1"; shift
mount --rbind "$R" "$R"
mount -t tmpfs -o mode=0755,nosuid,size=65536k tmpfs "$R/dev"
mknod -m 0666 "$R/dev/null"    c 1 3
mknod -m 0666 "$R/dev/zero"    c 1 5
mknod -m 0666 "$R/dev/full"    c 1 7
mknod -m 0666 "$R/dev/random"  c 1 8
mknod -m 0666 "$R/dev/urandom" c 1 9
mknod -m 0666 "$R/dev/tty"     c 5 0
mknod -m 0666 "$R/dev/fuse"    c 10 229
mknod -m 0660 "$R/dev/loop-control" c 10 237
for i in 0 1 2 3 4 5 6 7; do mknod -m 0660 "$R/dev/loop$i" b 7 $i; done
mkdir -m 0755 "$R/dev/pts"; mkdir -m 1777 "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"; ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
mount --rbind /sys "$R/sys";  mount --make-rslave "$R/sys"
mount -t proc proc "$R/proc"
mkdir -p "$R/.oldroot"
cd "$R"
pivot_root . .oldroot
cd /
umount -l /.oldroot
exec /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8 "$@"' sh "$(readlink -f "$ROOTFS")" "$@"
}

host_prereqs() {   # declared with the tests' other host packages
  "$HERE/../host-packages.sh" install mmdebstrap debian-archive-keyring
}

build() {
  if [ -e "$ROOTFS/$STAMP" ] && [ -z "${REBUILD:-}" ]; then
    log "cached: $ROOTFS"; return
  fi
  if [ -n "${INSTANCE:-}" ]; then
    INSTANCE= "$0" build
    rm -rf "$ROOTFS" "$ROOTFS.tmp"
    cp -a "$BASE_ROOTFS" "$ROOTFS.tmp" && mv "$ROOTFS.tmp" "$ROOTFS"
    log "instance $INSTANCE copied from $BASE_ROOTFS"
    return
  fi
  [ "$(id -u)" = 0 ] || die "building the root filesystem needs root (mmdebstrap, mknod)"
  host_prereqs
  rm -rf "$ROOTFS" "$ROOTFS.tmp"; mkdir -p "$DEBS"
  local suite srcs=() opts=()
  # The sid Release file can be past its Valid-Until on mirrors.
  opts+=(--aptopt='Acquire::Check-Valid-Until "false"' --aptopt='Acquire::Retries "3"')
  if [ "$VARIANT" = sid ]; then
    suite=sid; srcs=("deb [signed-by=$KEYRING] $MIRROR sid main")
  elif [ "$VARIANT" = mix ]; then
    suite=trixie
    srcs=("deb [signed-by=$KEYRING] $MIRROR trixie main" "deb [signed-by=$KEYRING] $MIRROR sid main")
    opts+=(--aptopt='APT::Default-Release "trixie"')   # trixie has no apptainer: only it comes from sid
  else
    suite=bullseye; srcs=("deb [signed-by=$KEYRING] $MIRROR bullseye main")
  fi
  local t0=$SECONDS
  log "mmdebstrap $suite -> $ROOTFS.tmp"
  mmdebstrap --quiet --variant=minbase "${opts[@]}" --include="$PKGS" \
    --skip=essential/unlink \
    --setup-hook="mkdir -p \"\$1\"/var/cache/apt/archives/" \
    --setup-hook="sync-in $DEBS /var/cache/apt/archives/" \
    --customize-hook="sync-out /var/cache/apt/archives $DEBS" \
    "$suite" "$ROOTFS.tmp" "${srcs[@]}"
  mv "$ROOTFS.tmp" "$ROOTFS"
  if [ "$VARIANT" = py39 ]; then
    # nobody must be able to read the project and its venv (tests drop to it)
    chmod 0755 "$ROOTFS/opt"
  else
    configure
  fi
  touch "$ROOTFS/$STAMP"
  log "built in $((SECONDS - t0)) s: $(du -sh "$ROOTFS" | cut -f1)"
}

configure() {
  local R=$ROOTFS
  # HTCondor resolves its own host name; the fresh /etc/hosts lacks it.
  grep -qw "$(hostname)" "$R/etc/hosts" || echo "127.0.0.1 $(hostname)" >> "$R/etc/hosts"
  sed -i 's/^root default capabilities = .*/root default capabilities = no/' "$R/etc/apptainer/apptainer.conf"
  touch "$ROOTFS/$STAMP"   # enter() checks it
  "$0" enter /bin/bash -ec '
    id tester >/dev/null 2>&1 || useradd -m -u 1000 -s /bin/bash tester
    install -d -o condor -g condor -m 0755 /var/lib/condor/execute
    apptainer -s build /usr/libexec/condor/exit_37.sif /usr/libexec/condor/singularity_test_sandbox
    # A tiny busybox image, as SIF and as an Apptainer sandbox directory
    # (a raw directory fails HTCondor pre-job "apptainer test").
    C=/opt/containers; rm -rf $C; mkdir -p $C/rawroot
    cd $C/rawroot; mkdir -p bin etc tmp var/tmp proc dev sys home srv; chmod 1777 tmp var/tmp
    cp /bin/busybox bin/busybox
    for a in sh true false echo cat ls id env sleep mkdir rm touch stat head tr wc; do ln -s busybox bin/$a; done
    echo "startd-health test image" > etc/motd
    echo "root:x:0:0:root:/root:/bin/sh" > etc/passwd; echo "root:x:0:" > etc/group
    cd $C
    apptainer -s build test.sif rawroot/
    apptainer -s build --sandbox sandbox/ test.sif
    rm -rf rawroot
    chmod -R a+rX $C
  '
}

case "${1:-}" in
  build) build ;;
  enter) shift; enter "$@" ;;
  path)  echo "$ROOTFS" ;;
  *) echo "usage: $0 build|enter CMD...|path" >&2; exit 2 ;;
esac
