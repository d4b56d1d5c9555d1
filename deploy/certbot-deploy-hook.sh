#!/bin/sh
# certbot --deploy-hook for wsgate.
#
# certbot runs this once per successfully issued or renewed certificate, with
# RENEWED_LINEAGE=/etc/letsencrypt/live/<name>. The hook
#   1. makes the lineage's fullchain.pem / privkey.pem readable by group wsgate
#      (in place, so tls.cert / tls.key can point at /etc/letsencrypt/live/...),
#      or, when WSGATE_TLS_COPY_DIR is set, copies them there instead;
#   2. runs `wsgate check-config` as the wsgate user (the same check the
#      service runs before starting);
#   3. reloads the running gateway (SIGHUP via systemctl reload): new TLS
#      handshakes use the new certificate, open connections are not touched.
#
# Install:
#   install -m 0755 deploy/certbot-deploy-hook.sh /usr/local/lib/wsgate/certbot-deploy-hook.sh
#   certbot certonly ... --deploy-hook /usr/local/lib/wsgate/certbot-deploy-hook.sh
# (certbot stores the hook in /etc/letsencrypt/renewal/<name>.conf for renewals.)
# Test by hand:
#   RENEWED_LINEAGE=/etc/letsencrypt/live/chat.example.com /usr/local/lib/wsgate/certbot-deploy-hook.sh
#
# Settings (environment, or edit the defaults below):
#   WSGATE_LINEAGE       only act for this lineage name (e.g. chat.example.com);
#                        empty = every lineage. Set it when the hook lives in
#                        /etc/letsencrypt/renewal-hooks/deploy/ (runs for all).
#   WSGATE_TLS_COPY_DIR  copy mode: copy fullchain.pem/privkey.pem into this
#                        directory (root:wsgate, 0640) instead of in-place mode.
#   WSGATE_CONFIG        config file (default /etc/wsgate/wsgate.toml).
#   WSGATE_BIN, WSGATE_USER, WSGATE_GROUP, WSGATE_UNIT, WSGATE_ENV_FILE,
#   WSGATE_WORKDIR (the unit's WorkingDirectory).
#   WSGATE_SYSTEMCTL     the systemctl to call (default systemctl): a wrapper
#                        script reloads another way (a container, tests).
#
# The env file (systemd EnvironmentFile syntax) is read, never executed: only
# its WSGATE__* lines (the config overrides check-config must see) are
# exported, each value taken literally as systemd does ("$(...)", backticks
# and "$VAR" stay text; one pair of surrounding quotes is removed). check-config
# runs through runuser unless the hook already runs as WSGATE_USER.

set -eu

WSGATE_LINEAGE="${WSGATE_LINEAGE:-}"
WSGATE_TLS_COPY_DIR="${WSGATE_TLS_COPY_DIR:-}"
WSGATE_CONFIG="${WSGATE_CONFIG:-/etc/wsgate/wsgate.toml}"
WSGATE_BIN="${WSGATE_BIN:-/usr/local/bin/wsgate}"
WSGATE_USER="${WSGATE_USER:-wsgate}"
WSGATE_GROUP="${WSGATE_GROUP:-wsgate}"
WSGATE_UNIT="${WSGATE_UNIT:-wsgate}"
WSGATE_ENV_FILE="${WSGATE_ENV_FILE:-/etc/wsgate/wsgate.env}"
WSGATE_WORKDIR="${WSGATE_WORKDIR:-/etc/wsgate}"
WSGATE_SYSTEMCTL="${WSGATE_SYSTEMCTL:-systemctl}"

log() {
    printf 'wsgate-deploy-hook: %s\n' "$*" >&2
}

# Exports the WSGATE__KEY=value lines of an EnvironmentFile without running
# anything in it. Other lines (comments, other keys, anything else) are skipped.
load_env_file() {
    while IFS= read -r line || [ -n "$line" ]; do
        line="${line#"${line%%[![:space:]]*}"}"
        key="${line%%=*}"
        [ "$key" != "$line" ] || continue
        key="${key%"${key##*[![:space:]]}"}"
        case "$key" in
            WSGATE__*) ;;
            *) continue ;;
        esac
        case "$key" in
            *[!A-Za-z0-9_]*) continue ;;
        esac
        value="${line#*=}"
        value="${value#"${value%%[![:space:]]*}"}"
        value="${value%"${value##*[![:space:]]}"}"
        case "$value" in
            \"*\") value="${value#\"}"; value="${value%\"}" ;;
            \'*\') value="${value#\'}"; value="${value%\'}" ;;
        esac
        export "$key=$value"
    done < "$1"
}

# Runs a command as the service user (directly when the hook already is it).
as_service_user() {
    if [ "$(id -un)" = "$WSGATE_USER" ]; then
        "$@"
    else
        runuser -u "$WSGATE_USER" -- "$@"
    fi
}

if [ -z "${RENEWED_LINEAGE:-}" ]; then
    log "RENEWED_LINEAGE is not set (run me from certbot --deploy-hook)"
    exit 2
fi

name=$(basename "$RENEWED_LINEAGE")
if [ -n "$WSGATE_LINEAGE" ] && [ "$name" != "$WSGATE_LINEAGE" ]; then
    log "lineage $name is not $WSGATE_LINEAGE; nothing to do"
    exit 0
fi

for f in fullchain.pem privkey.pem; do
    if [ ! -r "$RENEWED_LINEAGE/$f" ]; then
        log "missing $RENEWED_LINEAGE/$f"
        exit 1
    fi
done

umask 077

if [ -n "$WSGATE_TLS_COPY_DIR" ]; then
    # Copy mode: write a temporary file, then rename over the old one, so a
    # reader never sees a half-written file.
    mkdir -p "$WSGATE_TLS_COPY_DIR"
    chown "root:$WSGATE_GROUP" "$WSGATE_TLS_COPY_DIR"
    chmod 0750 "$WSGATE_TLS_COPY_DIR"
    for f in fullchain.pem privkey.pem; do
        tmp="$WSGATE_TLS_COPY_DIR/.$f.new"
        cp "$RENEWED_LINEAGE/$f" "$tmp"
        chown "root:$WSGATE_GROUP" "$tmp"
        chmod 0640 "$tmp"
        mv -f "$tmp" "$WSGATE_TLS_COPY_DIR/$f"
    done
    log "copied $name certificate to $WSGATE_TLS_COPY_DIR"
else
    # In-place mode: live/<name>/*.pem are symlinks into archive/<name>/.
    # The parents stay closed to listing (0711: traverse only); the lineage
    # directories and the key become group-readable for wsgate.
    le_root=$(dirname "$(dirname "$RENEWED_LINEAGE")")
    archive="$le_root/archive/$name"
    chmod 0711 "$le_root/live" "$le_root/archive"
    chgrp "$WSGATE_GROUP" "$RENEWED_LINEAGE" "$archive"
    chmod 0750 "$RENEWED_LINEAGE" "$archive"
    for f in "$archive"/privkey*.pem; do
        chgrp "$WSGATE_GROUP" "$f"
        chmod 0640 "$f"
    done
    log "made $name readable by group $WSGATE_GROUP"
fi

if [ ! -f "$WSGATE_CONFIG" ]; then
    log "$WSGATE_CONFIG does not exist yet; skipping check and reload"
    exit 0
fi

# Same environment overrides as the service. The file is data for systemd,
# which never runs it; sourcing it here would run any $(...) or `...` in a
# value as root (and mangle such values), so it is parsed instead.
if [ -r "$WSGATE_ENV_FILE" ]; then
    load_env_file "$WSGATE_ENV_FILE"
fi

# Check as the service user from the service's working directory, so file
# permissions and relative paths are checked the way the gateway sees them.
if ! (cd "$WSGATE_WORKDIR" && as_service_user "$WSGATE_BIN" check-config --config "$WSGATE_CONFIG" >/dev/null); then
    log "check-config failed; NOT reloading (the gateway keeps its current certificate)"
    exit 1
fi

if "$WSGATE_SYSTEMCTL" is-active --quiet "$WSGATE_UNIT"; then
    "$WSGATE_SYSTEMCTL" reload "$WSGATE_UNIT"
    log "reloaded $WSGATE_UNIT"
else
    log "$WSGATE_UNIT is not running; it will use the new certificate when started"
fi
