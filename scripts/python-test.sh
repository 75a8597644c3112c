#!/usr/bin/env bash
# scripts/python-test.sh — tests the Python asyncio SDK in sdk/python against a real server.
#
#   1. makes a virtualenv (target/py-venv, or $CROUPIER_STATE_DIR/py-venv) and pip-installs the
#      pinned test dependencies into it (skipped when they are already there);
#   2. checks that the generated code committed in sdk/python/src/croupier matches what
#      grpcio-tools generates from proto/ (sdk/python/generate.py --check);
#   3. builds the wheel of sdk/python (python -m build) and installs it (no editable install: the
#      tests import what a user would get);
#   4. runs mypy --strict on the package's sources (settings in sdk/python/pyproject.toml);
#   5. runs pytest (pytest-asyncio) from sdk/python/tests with CROUPIER_BIN pointing at the
#      binary; the tests start their own `croupier server` processes and stop them.
# Missing components are failures, not skips. Extra arguments go to pytest (e.g. -k jobs).
#
# Environment:
#   CROUPIER_BIN=PATH        the croupier binary (default target/debug/croupier; not built here)
#   CROUPIER_STATE_DIR=DIR   where the virtualenv and the wheel go (default target/)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CROUPIER_BIN="${CROUPIER_BIN:-target/debug/croupier}"
[[ "$CROUPIER_BIN" == /* ]] || CROUPIER_BIN="$ROOT/$CROUPIER_BIN"
STATE="${CROUPIER_STATE_DIR:-$ROOT/target}"
VENV="$STATE/py-venv"
DIST="$STATE/py-dist"
PYTHON_BIN="${PYTHON:-python3}"
# Pinned test dependencies. grpcio-tools must match the generated code's version (generate.py).
DEPS=(
    grpcio==1.85.1
    grpcio-tools==1.85.1
    grpcio-health-checking==1.85.1
    googleapis-common-protos==1.76.0
    protobuf==7.36.2
    pydantic==2.14.3
    pytest==9.2.0
    pytest-asyncio==1.5.0
    pytest-timeout==2.4.0
    build==1.6.1
    mypy==2.4.1
    grpc-stubs==1.53.0.6
    types-protobuf==7.35.1.20260906
)

die() {
    printf 'python-test.sh: ERROR: %s\n' "$*" >&2
    exit 1
}
section() { printf '\n==== %s ====\n' "$*"; }

[[ -x "$CROUPIER_BIN" ]] || die "no croupier binary at $CROUPIER_BIN (cargo build --bin croupier, or set CROUPIER_BIN)"
command -v "$PYTHON_BIN" >/dev/null || die "$PYTHON_BIN not found (Python >= 3.10 is needed)"

section "1/5 virtualenv $VENV"
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON_BIN" -m venv "$VENV" || die "cannot make a virtualenv (Debian: apt-get install python3-venv)"
fi
want="$(printf '%s\n' "${DEPS[@]}" | LC_ALL=C sort)"
have="$("$VENV/bin/python" -m pip freeze --all 2>/dev/null | LC_ALL=C sort || true)"
if [[ -n "$(comm -23 <(echo "$want") <(echo "$have"))" ]]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "${DEPS[@]}"
else
    echo "pinned dependencies present"
fi
PY="$VENV/bin/python"
"$PY" -c 'import sys; print("python", sys.version.split()[0])'

section "2/5 generated code matches proto/"
"$PY" sdk/python/generate.py --check

section "3/5 wheel"
rm -rf "$DIST" sdk/python/build sdk/python/src/croupier.egg-info
"$PY" -m build --wheel --outdir "$DIST" sdk/python >"$STATE/py-build.log" 2>&1 ||
    { tail -n 40 "$STATE/py-build.log"; die "building the wheel failed"; }
rm -rf sdk/python/build sdk/python/src/croupier.egg-info
WHEEL="$(ls "$DIST"/croupier-*.whl)"
echo "built $WHEEL"
"$PY" -m pip install -q --force-reinstall --no-deps "$WHEEL"
# The installed package, not the source tree, must be what the tests import.
(cd /tmp && "$PY" -c 'import croupier, os; p = os.path.dirname(croupier.__file__); assert "site-packages" in p, p; assert os.path.exists(os.path.join(p, "py.typed")); print("installed", croupier.__version__, "at", p)')

section "4/5 mypy --strict"
(cd sdk/python && "$PY" -m mypy --cache-dir "$STATE/py-mypy-cache" src/croupier)

section "5/5 pytest"
export CROUPIER_BIN PYTHONDONTWRITEBYTECODE=1
cd sdk/python
rc=0
"$PY" -m pytest -p no:cacheprovider -q -ra --timeout=180 "$@" || rc=$?
((rc != 5)) || die "pytest collected no tests"
exit "$rc"
