#!/bin/bash
# host-packages.sh - install the Debian packages the tests need (declared in
# tests/host-packages.txt) whose commands or files are missing here.
#
# usage: host-packages.sh list [unit|all]     the declarations: package scope items...
#        host-packages.sh missing [unit|all]  those with a command/file missing here
#        host-packages.sh install [unit|all|PACKAGE...]
#                                   apt-get install the missing ones (root;
#                                   `apt-get update` once first). Not root:
#                                   name them and exit 1.
# unit: what the unit tests need; all (default): the end-to-end tests too.
set -euo pipefail
DECLARED=$(dirname "$0")/host-packages.txt

# "package scope item..." per declared package, comments dropped.
entries() { sed -e 's/#.*//' "$DECLARED" | awk 'NF >= 3 { $1 = $1; print }'; }

select_entries() {   # $@: unit | all | package names
  local want=${1:-all}
  case $want in
    unit) entries | awk '$2 == "unit"' ;;
    all)  entries ;;
    *)    entries | awk -v names=" $* " 'index(names, " " $1 " ")' ;;
  esac
}

missing() {
  local package scope item
  select_entries "$@" | while read -r package scope items; do
    for item in $items; do
      if [[ $item == */* ]]; then [ -e "$item" ] || { echo "$package"; break; }
      else command -v "$item" >/dev/null 2>&1 || { echo "$package"; break; }
      fi
    done
  done
}

case "${1:-}" in
  list)    shift; select_entries "$@" ;;
  missing) shift; missing "$@" ;;
  install)
    shift
    mapfile -t need < <(missing "$@")
    [ ${#need[@]} -gt 0 ] || exit 0
    if [ "$(id -u)" != 0 ]; then
      echo "host-packages: missing Debian packages (tests/host-packages.txt): ${need[*]}; install them as root (./dev test does it)" >&2
      exit 1
    fi
    echo "host-packages: installing ${need[*]} (declared in tests/host-packages.txt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    ;;
  *) sed -n '5,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
