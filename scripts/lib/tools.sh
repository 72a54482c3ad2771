# Shared by the project's scripts: the outside programs the tests drive, installed on
# first use (PyPI into target/tools/, Debian packages with apt-get when run as root).
# shellcheck shell=bash

# Pinned: the contract test's findings are those of this version.
SCHEMATHESIS_VERSION=4.32.5

# ensure_schemathesis ROOT: target/tools/schemathesis/bin/schemathesis (PyPI, a venv).
ensure_schemathesis() {
    local root=$1 venv=$1/target/tools/schemathesis
    if [ -x "$venv/bin/schemathesis" ] &&
        "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
        return 0
    fi
    echo "installing schemathesis $SCHEMATHESIS_VERSION into $venv (PyPI)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2
}

# ensure_debian_package COMMAND PACKAGE: installs PACKAGE when COMMAND is missing (root
# only; otherwise says what to install and fails).
ensure_debian_package() {
    local command=$1 package=$2
    if command -v "$command" >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing $command (Debian package $package)" >&2
        if [ -z "${_raregen_apt_updated:-}" ]; then
            apt-get update -qq >/dev/null
            _raregen_apt_updated=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null
    else
        echo "$command is missing: install it (Debian: sudo apt-get install $package)" >&2
        return 1
    fi
}

# Pinned: the console test drives Debian's Chromium with this playwright-core.
PLAYWRIGHT_CORE_VERSION=1.64.1

# ensure_console_driver ROOT: Debian's chromium, and playwright-core (npm) in
# target/tools/console-driver/ for tests/console/drive.cjs.
ensure_console_driver() {
    local root=$1 dir=$1/target/tools/console-driver
    ensure_debian_package chromium chromium || return 1
    if [ -f "$dir/node_modules/playwright-core/package.json" ] &&
        grep -q "\"version\": \"$PLAYWRIGHT_CORE_VERSION\"" "$dir/node_modules/playwright-core/package.json"; then
        return 0
    fi
    echo "installing playwright-core $PLAYWRIGHT_CORE_VERSION into $dir (npm)" >&2
    mkdir -p "$dir"
    printf '{"private": true, "dependencies": {"playwright-core": "%s"}}\n' "$PLAYWRIGHT_CORE_VERSION" > "$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error >&2)
}
