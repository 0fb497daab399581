#!/usr/bin/env bash
# Make .venv with sftpd installed. Sourced by scripts/serve and scripts/test.
# Usage: bootstrap [extras]   e.g. bootstrap dev
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SFTPD_VENV:-$ROOT/.venv}"

apt_install() {
    # Install Debian packages when missing (as root, or through sudo).
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [ -z "${SFTPD_APT_UPDATED:-}" ]; then
        $sudo apt-get update -qq
        export SFTPD_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

bootstrap() {
    local extras="${1:-}"
    if [ ! -x "$VENV/bin/python" ]; then
        if ! python3 -m venv "$VENV" 2>/dev/null; then
            rm -rf "$VENV"
            apt_install python3-venv
            python3 -m venv "$VENV"
        fi
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
    local target="$ROOT"
    [ -n "$extras" ] && target="$ROOT[$extras]"
    "$VENV/bin/python" -m pip install -q -e "$target"
}
