#!/usr/bin/env bash
# scripts/console-test.sh — the operator console in a real browser.
#
#   1. makes a virtualenv (target/console-venv, or $CROUPIER_STATE_DIR/console-venv) with the
#      pinned Selenium and pytest (skipped when they are already there);
#   2. runs tests/console with pytest: each test starts real `croupier` servers and agents (and
#      one `croupier dev`) and drives Debian's headless Chromium through chromedriver.
# Chromium and chromedriver are Debian's (`chromium`, `chromium-driver`: scripts/test.sh installs
# them); a missing one is a failure. Screenshots go to $CONSOLE_SCREENSHOTS (default
# target/console-screenshots); docs/console-*.png are copies of some of them.
#
# Environment:
#   CROUPIER_BIN=PATH        the croupier binary (default target/debug/croupier; not built here)
#   CROUPIER_STATE_DIR=DIR   where the virtualenv goes (default target/)
#   CHROMIUM, CHROMEDRIVER   the browser and its driver (default /usr/bin/chromium, /usr/bin/chromedriver)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CROUPIER_BIN="${CROUPIER_BIN:-target/debug/croupier}"
[[ "$CROUPIER_BIN" == /* ]] || CROUPIER_BIN="$ROOT/$CROUPIER_BIN"
STATE="${CROUPIER_STATE_DIR:-$ROOT/target}"
VENV="$STATE/console-venv"
DEPS=(selenium==4.51.0 pytest==9.2.0 pytest-timeout==2.4.0)

die() {
    printf 'console-test.sh: ERROR: %s\n' "$*" >&2
    exit 1
}

[[ -x "$CROUPIER_BIN" ]] || die "no croupier binary at $CROUPIER_BIN (cargo build --bin croupier)"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
[[ -x "$CHROMIUM" ]] || die "no Chromium at $CHROMIUM (apt-get install chromium)"
[[ -x "$CHROMEDRIVER" ]] || die "no chromedriver at $CHROMEDRIVER (apt-get install chromium-driver)"

if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/pip" freeze 2>/dev/null | grep -qx "${DEPS[0]}"; then
    "$VENV/bin/pip" install -q "${DEPS[@]}"
fi

export CROUPIER_BIN CHROMIUM CHROMEDRIVER
export CONSOLE_SCREENSHOTS="${CONSOLE_SCREENSHOTS:-$ROOT/target/console-screenshots}"
cd tests/console
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --timeout 300 "$@"
# The fleet page at a few hundred real agent sessions (the figure for 10,000 comes from the same
# script run by hand: python tests/console/bench_fleet.py --agents 10000).
"$VENV/bin/python" bench_fleet.py --agents 500 --rounds 2
