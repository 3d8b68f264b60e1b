#!/usr/bin/env bash
# Install kamengd on a Debian/Ubuntu server, or upgrade it. Run as root from
# a checkout of the repository (or the unpacked source):
#
#   installer/install.sh --site-url https://shop.example.com --yes
#   installer/install.sh --nginx shop.example.com --yes
#
# The first run installs; a later run on the same machine upgrades (new
# package into the venv, `kamengd upgrade`, restart). installer/README.md
# explains every step and the KAMENGD_* variables tests use to relocate it.
set -euo pipefail

# The venv must be readable by the service user whatever root's umask is;
# kamengd gives its own secret files 0600 itself.
umask 022

die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
say() { printf '==> %s\n' "$*"; }

usage() {
    cat <<'EOF'
usage: installer/install.sh [options]

  --site-url URL        public address of the shop (payment callbacks are built
                        from it); default https://DOMAIN with --nginx, else
                        http://127.0.0.1:8000
  --site-name NAME      shop name (default kamengd)
  --admin-user NAME     owner account to create (default admin)
  --database-url URL    mysql+pymysql://... instead of SQLite in /var/lib/kamengd
  --nginx DOMAIN        also install nginx and a site for DOMAIN (TLS: certbot)
  --yes, -y             do not ask for confirmation
  --help, -h            this text

The first four only matter on the first run; later runs upgrade and keep the
existing configuration.
EOF
}

DATABASE_URL="" SITE_URL="" SITE_NAME="" ADMIN_USER="" NGINX_DOMAIN="" YES=""
while [ $# -gt 0 ]; do
    case "$1" in
        --*=*)
            set -- "${1%%=*}" "${1#*=}" "${@:2}"
            continue
            ;;
        --database-url | --site-url | --site-name | --admin-user | --nginx)
            if [ $# -lt 2 ] || [ -z "$2" ] || [[ "$2" == --* ]]; then
                die "$1 needs a value"
            fi
            case "$1" in
                --database-url) DATABASE_URL="$2" ;;
                --site-url) SITE_URL="$2" ;;
                --site-name) SITE_NAME="$2" ;;
                --admin-user) ADMIN_USER="$2" ;;
                --nginx) NGINX_DOMAIN="$2" ;;
            esac
            shift 2
            ;;
        --yes | -y) YES=1; shift ;;
        --help | -h) usage; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

if [ -n "$NGINX_DOMAIN" ] && ! [[ "$NGINX_DOMAIN" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
    die "--nginx $NGINX_DOMAIN: expected a domain name such as shop.example.com"
fi
if [ -n "$SITE_URL" ] && ! [[ "$SITE_URL" =~ ^https?://[^[:space:]]+$ ]]; then
    die "--site-url $SITE_URL: expected http://... or https://..."
fi

# Test hooks (installer/README.md): relocate every system path under a
# prefix and replace the effects on the machine.
PREFIX="${KAMENGD_ROOT:-}"
PREFIX="${PREFIX%/}"
if [ -n "$PREFIX" ] && ! [[ "$PREFIX" =~ ^/[A-Za-z0-9._/-]+$ ]]; then
    # The prefix is substituted into unit files with sed: keep it plain.
    die "KAMENGD_ROOT=$PREFIX: expected an absolute path of letters, digits and . _ - /"
fi
SYSTEMCTL="${KAMENGD_SYSTEMCTL:-systemctl}"
PYTHON="${KAMENGD_PYTHON:-python3}"
read -r -a PIP_ARGS <<<"${KAMENGD_PIP_ARGS:-}"

ETC_DIR="$PREFIX/etc/kamengd"
CONFIG="$ETC_DIR/kamengd.toml"
VENV="$PREFIX/opt/kamengd/venv"
KAMENGD="$VENV/bin/kamengd"
DATA_DIR="$PREFIX/var/lib/kamengd"
UNIT_DIR="$PREFIX/etc/systemd/system"
NGINX_DIR="$PREFIX/etc/nginx"
WRAPPER="$PREFIX/usr/local/bin/kamengd"
WRAPPER_MARK="# kamengd's command, written by installer/install.sh"
UNITS=(kamengd.service kamengd-scheduler.service)
BUILD_DIR=""
trap '[ -z "$BUILD_DIR" ] || rm -rf "$BUILD_DIR"' EXIT

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for f in setup.cfg kamengd/__init__.py migrations systemd/kamengd.service config/nginx.conf.example \
    config/kamengd.example.toml; do
    [ -e "$SRC/$f" ] || die "$SRC/$f is missing: run this script from a kamengd checkout"
done

ME="$(id -un)"
if [ -n "${KAMENGD_SERVICE_USER:-}" ]; then
    SERVICE_USER="$KAMENGD_SERVICE_USER"
    id -u "$SERVICE_USER" >/dev/null 2>&1 || die "KAMENGD_SERVICE_USER=$SERVICE_USER: no such user"
elif [ -n "$PREFIX" ]; then
    # A relocated install must never create a real system user.
    die "KAMENGD_ROOT needs KAMENGD_SERVICE_USER (an existing user to own the files)"
else
    SERVICE_USER=kamengd
fi
if [ "$(id -u)" -ne 0 ]; then
    [ -n "$PREFIX" ] || die "run as root (e.g. sudo $0 ...)"
    [ "$SERVICE_USER" = "$ME" ] || die "as $ME, KAMENGD_SERVICE_USER must be $ME (only root can chown)"
fi

# An installation is recognised by its config; one made by hand may still
# keep the config in the data directory (the old manual instructions).
if [ -e "$CONFIG" ] || [ -e "$DATA_DIR/kamengd.toml" ]; then
    MODE=upgrade
else
    MODE=install
    if [ -n "$(ls -A "$DATA_DIR" 2>/dev/null)" ]; then
        die "$DATA_DIR is not empty but $CONFIG is missing: restore the config, or move the directory away"
    fi
fi

if [ -z "$YES" ]; then
    [ -t 0 ] || die "no terminal to confirm on: run with --yes"
    read -r -p "${MODE^} kamengd (config $CONFIG, data $DATA_DIR)? [y/N] " answer
    [[ "$answer" =~ ^[Yy] ]] || die "cancelled; nothing changed"
fi

# Runs a command as the service user, in the data directory (the caller's
# working directory may be one the service user cannot enter) and with the
# units' umask, so that anything it writes there is private.
as_service() {
    if [ "$SERVICE_USER" = "$ME" ]; then
        (cd "$DATA_DIR" && umask 077 && "$@")
    else
        (cd "$DATA_DIR" && umask 077 && runuser -u "$SERVICE_USER" -- "$@")
    fi
}

install_packages() {
    local -a wanted=(python3 python3-venv python3-pip) missing=()
    [ -z "$NGINX_DOMAIN" ] || wanted+=(nginx)
    local p
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    command -v apt-get >/dev/null || die "apt-get not found: this installer is for Debian/Ubuntu"
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -q update >/dev/null || die "apt-get update failed"
    apt-get -q install -y --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

ensure_user() {
    id -u "$SERVICE_USER" >/dev/null 2>&1 && return 0
    say "creating system user $SERVICE_USER"
    useradd --system --user-group --home-dir "$DATA_DIR" --no-create-home \
        --shell /usr/sbin/nologin "$SERVICE_USER" || die "useradd $SERVICE_USER failed"
}

install_package() {
    "$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || die "$PYTHON is not Python 3.11+ with venv support (Debian 12, Ubuntu 24.04 or newer)"
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating the virtualenv $VENV"
        mkdir -p "$(dirname "$VENV")"
        "$PYTHON" -m venv "$VENV" || die "cannot create the virtualenv $VENV"
    fi
    # Build from a clean copy: a stale build/ or *.egg-info in the checkout
    # would otherwise end up in the installed package.
    BUILD_DIR="$(mktemp -d)"
    local p
    for p in setup.cfg setup.py pyproject.toml MANIFEST.in README.md LICENSE kamengd migrations config; do
        [ ! -e "$SRC/$p" ] || cp -R "$SRC/$p" "$BUILD_DIR/"
    done
    find "$BUILD_DIR" -name __pycache__ -prune -exec rm -rf {} +
    say "installing kamengd into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PIP_ARGS[@]}" "$BUILD_DIR" \
        || die "pip install into $VENV failed"
}

# `kamengd install` writes its config into the data directory with absolute
# paths; it then moves to /etc/kamengd, where the units look for it.
create_installation() {
    local group
    group="$(id -gn "$SERVICE_USER")"
    install -d -m 0700 -o "$SERVICE_USER" -g "$group" "$DATA_DIR"
    local -a args=(--data-dir "$DATA_DIR" --yes)
    [ -z "$DATABASE_URL" ] || args+=(--database-url "$DATABASE_URL")
    local site_url="${SITE_URL:-${NGINX_DOMAIN:+https://$NGINX_DOMAIN}}"
    [ -z "$site_url" ] || args+=(--site-url "$site_url")
    [ -z "$SITE_NAME" ] || args+=(--site-name "$SITE_NAME")
    [ -z "$ADMIN_USER" ] || args+=(--admin-user "$ADMIN_USER")
    say "creating the installation in $DATA_DIR"
    as_service "$KAMENGD" install "${args[@]}" >/dev/null || die "kamengd install failed (see above)"
}

place_config() {
    install -d -m 0750 -g "$(id -gn "$SERVICE_USER")" "$ETC_DIR"
    [ -e "$CONFIG" ] && return 0
    say "moving the config to $CONFIG"
    mv -n "$DATA_DIR/kamengd.toml" "$CONFIG"
    [ -e "$CONFIG" ] || die "could not move $DATA_DIR/kamengd.toml to $CONFIG"
}

# The venv's kamengd is not on PATH: a small wrapper in /usr/local/bin runs
# it, with this installation's config unless --config or KAMENGD_CONFIG names
# another. Every run rewrites it (a link to the venv's kamengd, as made by
# hand, becomes the wrapper); a kamengd there that is not ours is left alone.
install_wrapper() {
    local ours=""
    if [ -L "$WRAPPER" ]; then
        [ "$(readlink -f "$WRAPPER")" != "$(readlink -f "$KAMENGD")" ] || ours=1
    elif [ ! -e "$WRAPPER" ] || grep -qxF "$WRAPPER_MARK" "$WRAPPER"; then
        ours=1
    fi
    if [ -z "$ours" ]; then
        say "keeping $WRAPPER, which is not kamengd's wrapper: run $KAMENGD (or remove it and run this again)"
        return 0
    fi
    say "writing $WRAPPER (runs $KAMENGD)"
    mkdir -p "$(dirname "$WRAPPER")"
    printf '%s\n' '#!/bin/sh' "$WRAPPER_MARK" \
        "# (rewritten by every run of the installer; remove it together with $VENV)." \
        ": \"\${KAMENGD_CONFIG:=$CONFIG}\"" \
        'export KAMENGD_CONFIG' \
        "exec '$KAMENGD' \"\$@\"" >"$WRAPPER.tmp"
    chmod 0755 "$WRAPPER.tmp"
    mv -f "$WRAPPER.tmp" "$WRAPPER"
}

# The units name the real paths and user; a relocated or differently-owned
# install gets copies that point at its own.
install_units() {
    local group unit
    group="$(id -gn "$SERVICE_USER")"
    mkdir -p "$UNIT_DIR"
    for unit in "${UNITS[@]}"; do
        sed -e "s#/opt/kamengd/venv#$VENV#g" \
            -e "s#/etc/kamengd/#$ETC_DIR/#g" \
            -e "s#/var/lib/kamengd#$DATA_DIR#g" \
            -e "s#^User=kamengd\$#User=$SERVICE_USER#" \
            -e "s#^Group=kamengd\$#Group=$group#" \
            "$SRC/systemd/$unit" >"$UNIT_DIR/$unit.tmp"
        chmod 0644 "$UNIT_DIR/$unit.tmp"
        mv "$UNIT_DIR/$unit.tmp" "$UNIT_DIR/$unit"
    done
}

# Site, link and drop-in are written once and then left to the admin (and
# to certbot, which edits the site for TLS).
install_nginx_site() {
    local site="$NGINX_DIR/sites-available/kamengd.conf"
    local link="$NGINX_DIR/sites-enabled/kamengd.conf"
    local dropin="$UNIT_DIR/kamengd.service.d/nginx.conf"
    mkdir -p "$(dirname "$site")" "$(dirname "$link")" "$(dirname "$dropin")"
    if [ -e "$site" ]; then
        say "keeping the existing $site"
    else
        say "writing the nginx site $site for $NGINX_DOMAIN"
        sed "s/shop\.example\.com/$NGINX_DOMAIN/g" "$SRC/config/nginx.conf.example" >"$site"
    fi
    [ -e "$link" ] || [ -L "$link" ] || ln -s ../sites-available/kamengd.conf "$link"
    if [ ! -e "$dropin" ]; then
        # Trust exactly one proxy: client addresses and https:// come from nginx.
        printf '%s\n' "# Written by installer/install.sh --nginx: nginx is the one proxy in front." \
            "[Service]" "Environment=KAMENGD_SERVER_PROXY_COUNT=1" >"$dropin"
    fi
    # nginx -t checks the machine's real configuration, not a relocated one.
    if [ -z "$PREFIX" ]; then
        nginx -t -q || die "nginx -t failed: check $site"
    fi
}

# Doctor's scheduler check fails until the scheduler has run once; any
# other failure means the installation is not usable.
run_doctor() {
    local out rc=0
    say "kamengd doctor"
    out="$(as_service "$KAMENGD" --config "$CONFIG" doctor 2>&1)" || rc=$?
    printf '%s\n' "$out"
    [ "$rc" -eq 0 ] && return 0
    if grep -q '^FAIL' <<<"$out" && ! grep '^FAIL' <<<"$out" | grep -qv '^FAIL  scheduler:'; then
        say "the scheduler check passes once kamengd-scheduler.service has run"
        return 0
    fi
    die "kamengd doctor found problems (above)"
}

[ -z "$PREFIX" ] || say "installing under $PREFIX"
if [ "${KAMENGD_SKIP_PACKAGES:-0}" = 1 ]; then
    say "skipping apt-get (KAMENGD_SKIP_PACKAGES)"
else
    install_packages
fi
[ -n "${KAMENGD_SERVICE_USER:-}" ] || ensure_user
install_package

if [ "$MODE" = install ]; then
    create_installation
    place_config
else
    say "upgrading the installation at $CONFIG"
    if [ -n "$DATABASE_URL$SITE_URL$SITE_NAME$ADMIN_USER" ]; then
        say "keeping $CONFIG: --database-url, --site-url, --site-name and --admin-user are ignored"
    fi
    place_config
fi

install_wrapper
install_units
[ -z "$NGINX_DOMAIN" ] || install_nginx_site
"$SYSTEMCTL" daemon-reload

if [ "$MODE" = install ]; then
    "$SYSTEMCTL" enable --now "${UNITS[@]}"
else
    # Stopped first: a migration that fails is undone from the pre-upgrade
    # backup, which must not erase sales made while it ran.
    "$SYSTEMCTL" stop "${UNITS[@]}"
    as_service "$KAMENGD" --config "$CONFIG" upgrade \
        || die "kamengd upgrade failed (see above): the services are stopped; fix it, then start them"
    "$SYSTEMCTL" enable "${UNITS[@]}"
    "$SYSTEMCTL" restart "${UNITS[@]}"
fi
[ -z "$NGINX_DOMAIN" ] || "$SYSTEMCTL" reload-or-restart nginx.service

run_doctor

say "done ($MODE): config $CONFIG, data $DATA_DIR, web server on 127.0.0.1:8000, command $WRAPPER"
if [ "$MODE" = install ] && [ -f "$DATA_DIR/initial-admin-password" ]; then
    say "the owner's password is in $DATA_DIR/initial-admin-password: read it, then delete the file"
fi
if [ -n "$NGINX_DOMAIN" ]; then
    say "next, for TLS: apt-get install certbot python3-certbot-nginx && certbot --nginx -d $NGINX_DOMAIN"
fi
