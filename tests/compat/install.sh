#!/usr/bin/env bash
# Installs the real KISSmetrics client libraries that tests/test_compat_clients.py
# drives against Tally:
#   - each tests/compat/python/NAME.requirements.txt into its own venv,
#     .compat/py-NAME/ (the two PyPI clients both install a module named
#     KISSmetrics, and both need urllib3 1.x);
#   - the npm clients from tests/compat/node/package-lock.json (npm ci).
# Idempotent: an install whose inputs have not changed is skipped.
# Environment: PYTHON (default python3) makes the venvs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"

apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "compat: apt-get install $*" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "compat: missing $*; install it and run again" >&2
        exit 1
    fi
}

# --- PyPI clients: one venv each -------------------------------------------
"$python" -m venv --help >/dev/null 2>&1 || apt_install python3-venv
for requirements in "$here"/python/*.requirements.txt; do
    name="$(basename "$requirements" .requirements.txt)"
    venv="$root/.compat/py-$name"
    stamp="$venv/installed-requirements.txt"
    if cmp -s "$requirements" "$stamp" && "$venv/bin/python" -c '' 2>/dev/null; then
        continue
    fi
    echo "compat: installing $name into ${venv#"$root"/}" >&2
    "$python" -m venv --clear "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-input -r "$requirements"
    cp "$requirements" "$stamp"  # last, so that a failed install is retried
done

# --- npm clients ------------------------------------------------------------
command -v npm >/dev/null || apt_install nodejs npm
node_dir="$here/node"
stamp="$node_dir/node_modules/.installed-package-lock.json"
if ! cmp -s "$node_dir/package-lock.json" "$stamp"; then
    echo "compat: installing npm clients into tests/compat/node/node_modules" >&2
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    cp "$node_dir/package-lock.json" "$stamp"
fi
