# Shared by the project's scripts: make sure a Postgres server answers.
# shellcheck shell=bash

# ensure_postgres HOST PORT: starts the machine's cluster when it is down (Debian's
# pg_ctlcluster), then waits until it accepts connections.
ensure_postgres() {
    local host=${1:-127.0.0.1} port=${2:-5432}
    if pg_isready -q -h "$host" -p "$port" 2>/dev/null; then
        return 0
    fi
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        local version
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        echo "Postgres is down on $host:$port; starting cluster $version/main" >&2
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    fi
    for _ in $(seq 1 60); do
        if pg_isready -q -h "$host" -p "$port" 2>/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    echo "Postgres does not answer on $host:$port. Install and start PostgreSQL" \
         "(Debian: apt-get install postgresql), or point the scripts at a server." >&2
    return 1
}
