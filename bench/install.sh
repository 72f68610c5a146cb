#!/usr/bin/env bash
# Installs what bench/ingest.py drives: wrk (the load generator) and nginx (the
# reference server: empty_gif with an access log). Debian packages, as root.
# Idempotent: a no-op when both commands are already on the PATH.
#
# The nginx package would normally start a system nginx on port 80 as it is
# installed; the benchmark starts its own nginx on a free port instead, so the
# install runs with a temporary policy-rc.d that tells invoke-rc.d not to start
# services (only if the machine has no policy-rc.d of its own).
set -euo pipefail

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "bench: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]})" >&2
    exit 1
fi

policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
cleanup() {
    if [ "$own_policy" = 1 ]; then
        rm -f "$policy"
    fi
}
trap cleanup EXIT

echo "bench: apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    # The package lists are missing or stale: refresh them once and retry.
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
