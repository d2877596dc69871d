# Sourced by .ci/run (with `set -euo pipefail` active) before pytest.
#
# Starts a throw-away PostgreSQL server for the multi-worker Optuna tests and exports
#   STATMECH_TEST_POSTGRES_URL=postgresql://USER@127.0.0.1:PORT/statmech_test
# - installs the Debian `postgresql` package if no server binaries are found;
# - data directory, unix socket and log live in a fresh `mktemp -d` folder;
# - listens on 127.0.0.1 only, on a free port, with trust authentication (loopback, throw-away);
# - runs as the `postgres` user when we are root (the server refuses to run as root), else as us;
# - an EXIT trap stops the server and deletes the folder when .ci/run ends (if .ci/run already
#   has an EXIT trap, ours is appended to it). Should the trap not run (SIGKILL), the server keeps
#   running until the machine or container goes away; its folder is under $TMPDIR.

_statmech_pg_bindir() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
        echo "$dir"
        return 0
    fi
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
        return 0
    fi
    return 1
}

_statmech_pg_as() {
    # run a command as the server's owner
    if [ "$(id -u)" -eq 0 ]; then
        if command -v runuser >/dev/null 2>&1; then
            runuser -u "$STATMECH_PG_USER" -- "$@"
        else
            su -s /bin/sh "$STATMECH_PG_USER" -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}

_statmech_pg_stop() {
    if [ -n "${STATMECH_PG_DIR:-}" ] && [ -d "$STATMECH_PG_DIR" ]; then
        _statmech_pg_as "$STATMECH_PG_BIN/pg_ctl" -D "$STATMECH_PG_DIR/data" -m immediate \
            stop >/dev/null 2>&1 || true
        rm -rf "$STATMECH_PG_DIR"
    fi
}

_statmech_pg_start() {
    if ! STATMECH_PG_BIN="$(_statmech_pg_bindir)"; then
        echo "postgres.sh: installing PostgreSQL from the Debian packages" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y --no-install-recommends postgresql
        STATMECH_PG_BIN="$(_statmech_pg_bindir)"
    fi
    if [ "$(id -u)" -eq 0 ]; then
        STATMECH_PG_USER=postgres
        if ! id "$STATMECH_PG_USER" >/dev/null 2>&1; then
            useradd --system --home-dir /var/lib/postgresql --shell /bin/bash "$STATMECH_PG_USER"
        fi
    else
        STATMECH_PG_USER="$(id -un)"
    fi
    STATMECH_PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/statmech-pg.XXXXXX")"
    mkdir -p "$STATMECH_PG_DIR/sock"
    if [ "$(id -u)" -eq 0 ]; then
        chown -R "$STATMECH_PG_USER" "$STATMECH_PG_DIR"
    fi
    local port
    port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    _statmech_pg_as "$STATMECH_PG_BIN/initdb" -D "$STATMECH_PG_DIR/data" -U "$STATMECH_PG_USER" \
        --auth=trust --encoding=UTF8 --no-sync >"$STATMECH_PG_DIR/initdb.log" 2>&1 || {
        cat "$STATMECH_PG_DIR/initdb.log" >&2
        return 1
    }
    _statmech_pg_as "$STATMECH_PG_BIN/pg_ctl" -D "$STATMECH_PG_DIR/data" \
        -l "$STATMECH_PG_DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $STATMECH_PG_DIR/sock -c fsync=off" \
        start >/dev/null || {
        cat "$STATMECH_PG_DIR/server.log" >&2
        return 1
    }
    _statmech_pg_as "$STATMECH_PG_BIN/createdb" -h 127.0.0.1 -p "$port" \
        -U "$STATMECH_PG_USER" statmech_test
    export STATMECH_TEST_POSTGRES_URL="postgresql://$STATMECH_PG_USER@127.0.0.1:$port/statmech_test"
    echo "postgres.sh: PostgreSQL ($("$STATMECH_PG_BIN/postgres" --version)) at" \
        "$STATMECH_TEST_POSTGRES_URL, data in $STATMECH_PG_DIR" >&2
}

_statmech_pg_previous_trap="$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")"
trap "${_statmech_pg_previous_trap:+$_statmech_pg_previous_trap; }_statmech_pg_stop" EXIT
_statmech_pg_start
