#!/usr/bin/env bash
# Installs the Debian packages callpeer needs (given as arguments) when root and missing.
set -u
missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null && exit 0
    echo "apt-get could not install ${missing[*]}; continuing without them" >&2
else
    echo "missing system packages: ${missing[*]} (install them as root: apt-get install ${missing[*]});" \
         "continuing: callpeer says what it cannot do without them" >&2
fi
exit 0
