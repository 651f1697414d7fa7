# Makes a PostgreSQL server available to the tests and exports DIRIGENT_TEST_PG_URL.
#
# In order: the URL already in DIRIGENT_TEST_PG_URL; a server on 127.0.0.1:5432 that lets
# `postgres` into database `test` without a password; otherwise a throwaway cluster made with
# initdb on a free port (installing Debian's postgresql package first when it is missing),
# stopped and deleted when the calling script exits. DIRIGENT_TEST_PG=throwaway forces the last.

pg_usable() {
    psql "$1" -Atqc 'SELECT 1' >/dev/null 2>&1
}

pg_bin_dir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

ensure_postgres() {
    if [[ "${DIRIGENT_TEST_PG:-}" != throwaway ]]; then
        if [[ -n "${DIRIGENT_TEST_PG_URL:-}" ]] && pg_usable "$DIRIGENT_TEST_PG_URL"; then
            echo "postgres: using DIRIGENT_TEST_PG_URL"
            return
        fi
        local local_url="postgres://postgres@127.0.0.1:5432/test"
        if command -v psql >/dev/null && pg_usable "$local_url"; then
            export DIRIGENT_TEST_PG_URL="$local_url"
            echo "postgres: using the server at 127.0.0.1:5432"
            return
        fi
    fi
    start_throwaway_postgres
}

start_throwaway_postgres() {
    local bin
    bin="$(pg_bin_dir)"
    if [[ -z "$bin" ]]; then
        echo "postgres: installing Debian's postgresql package"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        bin="$(pg_bin_dir)"
    fi
    local port dir
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    dir="$(mktemp -d /tmp/dirigent-pg.XXXXXX)"
    local as_owner=()
    if [[ "$(id -u)" == 0 ]]; then
        chown postgres: "$dir"
        as_owner=(runuser -u postgres --)
    fi
    "${as_owner[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync >/dev/null
    "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    PG_THROWAWAY_DIR="$dir"
    PG_THROWAWAY_STOP=("${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop)
    trap stop_throwaway_postgres EXIT
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres test
    export DIRIGENT_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/test"
    echo "postgres: started a throwaway cluster on port $port"
}

stop_throwaway_postgres() {
    "${PG_THROWAWAY_STOP[@]}" >/dev/null 2>&1 || true
    rm -rf "$PG_THROWAWAY_DIR"
}
