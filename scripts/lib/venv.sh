# shellcheck shell=bash
# Sourced by the scripts in scripts/: `source "$(dirname "$0")/lib/venv.sh"; kamengd_venv [test]`.
#
# kamengd_venv [test]
#   Makes sure a virtualenv with kamengd installed from this checkout exists,
#   then sets and exports:
#     ROOT      the repository root (two levels above this file)
#     VENV      ${KAMENGD_VENV:-$ROOT/.venv}
#     PY        $VENV/bin/python
#     KAMENGD   $VENV/bin/kamengd
#   With the argument `test`, the [test] extra (pytest, ...) is installed too.
#
#   kamengd is installed with a regular, non-editable `pip install` (tests and
#   scripts exercise the installed package, including its package data and
#   migrations), from a clean copy of the package sources so that no stale
#   build/ or *.egg-info in the checkout can leak into the installed files.
#   The install is skipped when a stamp file in the venv says the same
#   sources (setup.cfg, pyproject.toml, README.md, LICENSE, kamengd/,
#   migrations/, config/, tracked or not) were already installed.
#
#   Python: $KAMENGD_PYTHON, else the first of python3, python3.13, python3.12,
#   python3.11 that is 3.11+ and can create a venv. If there is none, and we
#   are root on a machine with apt-get, python3 python3-venv python3-pip are
#   installed from the distribution first.
#
# Safe under `set -euo pipefail`, and returns non-zero on failure without it
# (or when called as `kamengd_venv || ...`).

_kamengd_venv_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Files and directories of the checkout that make up the installed package.
_kamengd_source_paths() {
    local p
    for p in setup.cfg setup.py pyproject.toml MANIFEST.in README.md LICENSE kamengd migrations config; do
        if [ -e "$ROOT/$p" ]; then
            printf '%s\n' "$p"
        fi
    done
}

# A hash of the names and contents of every source file that goes into the install.
_kamengd_source_hash() {
    local -a paths
    mapfile -t paths < <(_kamengd_source_paths)
    (
        cd "$ROOT" || exit 1
        find "${paths[@]}" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
            | LC_ALL=C sort -z \
            | xargs -0 -r sha256sum \
            | sha256sum
    ) | cut -d' ' -f1
}

_kamengd_python_ok() {
    # 3.11+ and able to make a venv with pip (Debian splits ensurepip into python3-venv).
    "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

_kamengd_find_python() {
    local candidate
    if [ -n "${KAMENGD_PYTHON:-}" ]; then
        if _kamengd_python_ok "$KAMENGD_PYTHON"; then
            printf '%s\n' "$KAMENGD_PYTHON"
            return 0
        fi
        echo "kamengd_venv: KAMENGD_PYTHON=$KAMENGD_PYTHON is not Python 3.11+ with venv support" >&2
        return 1
    fi
    for candidate in python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 && _kamengd_python_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

kamengd_venv() {
    local extra="${1:-}"
    ROOT="$(cd "$_kamengd_venv_lib_dir/../.." && pwd)"
    VENV="${KAMENGD_VENV:-$ROOT/.venv}"
    local stamp="$VENV/.kamengd-install-stamp"

    if [ ! -x "$VENV/bin/python" ]; then
        local python
        if ! python="$(_kamengd_find_python)"; then
            if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
                echo "kamengd_venv: installing python3 python3-venv python3-pip with apt-get" >&2
                { DEBIAN_FRONTEND=noninteractive apt-get -qq update >/dev/null \
                    && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends \
                        python3 python3-venv python3-pip >/dev/null; } \
                    || echo "kamengd_venv: apt-get failed" >&2
            fi
            if ! python="$(_kamengd_find_python)"; then
                echo "kamengd_venv: Python 3.11 or newer with venv support is needed (none found)" >&2
                return 1
            fi
        fi
        echo "kamengd_venv: creating $VENV with $("$python" -V 2>&1)" >&2
        "$python" -m venv "$VENV" || return 1
        rm -f "$stamp"
    fi

    local want_hash have_hash="" have_extra=""
    want_hash="$(_kamengd_source_hash)" || return 1
    if [ -f "$stamp" ]; then
        read -r have_hash have_extra < "$stamp" || true
    fi
    if [ "$want_hash" != "$have_hash" ] \
        || { [ "$extra" = test ] && [ "$have_extra" != test ]; } \
        || [ ! -x "$VENV/bin/kamengd" ]; then
        local target_extra=""
        if [ "$extra" = test ] || [ "$have_extra" = test ]; then
            target_extra="test"
        fi
        echo "kamengd_venv: installing kamengd${target_extra:+[$target_extra]} into $VENV" >&2
        rm -f "$stamp"
        # Build from a clean copy: no stale build/ or *.egg-info from the checkout.
        (
            # (set -e does not apply in here, because of the `|| return 1`.)
            set -o pipefail
            local tmp
            tmp="$(mktemp -d "${TMPDIR:-/tmp}/kamengd-src.XXXXXX")" || exit 1
            trap 'rm -rf "$tmp"' EXIT
            local -a paths
            mapfile -t paths < <(_kamengd_source_paths)
            tar -C "$ROOT" --exclude=__pycache__ --exclude='*.pyc' -cf - "${paths[@]}" \
                | tar -C "$tmp" -xf - || exit 1
            local spec="$tmp"
            if [ -n "$target_extra" ]; then
                spec="${tmp}[${target_extra}]"
            fi
            # pip always rebuilds and reinstalls a project given as a local
            # directory, even when its version number did not change.
            "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$spec"
        ) || return 1
        printf '%s %s\n' "$want_hash" "$target_extra" > "$stamp" || return 1
    fi

    PY="$VENV/bin/python"
    KAMENGD="$VENV/bin/kamengd"
    export ROOT VENV PY KAMENGD
}
