#!/usr/bin/env bash
# The comparison benchmark in one command (BENCHMARKS.md, "Comparison: direct, AgentGate, blind
# tunnel, mitmproxy"): makes a Python venv with mitmproxy when it is missing, then runs
# `cargo bench --bench compare` with the venv's mitmdump in MITMDUMP.
#
#   tools/bench-compare.sh            # 5 s per measurement
#   tools/bench-compare.sh 8          # 8 s per measurement
#
# Environment: PYTHON (default python3; mitmproxy 11.0.2 needs 3.10 or newer),
# BENCH_VENV (default target/bench-venv), MITMDUMP (use this mitmdump instead of the venv's).
# Every socket the bench opens is on 127.0.0.1; only pip talks to the package index.
set -euo pipefail

MITMPROXY_VERSION=11.0.2
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ -z "${MITMDUMP:-}" ]]; then
    venv="${BENCH_VENV:-$root/target/bench-venv}"
    python="${PYTHON:-python3}"
    if [[ ! -x "$venv/bin/mitmdump" ]] ||
        ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mitmproxy') != '$MITMPROXY_VERSION')" 2>/dev/null; then
        echo "bench-compare: installing mitmproxy==$MITMPROXY_VERSION into $venv" >&2
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "mitmproxy==$MITMPROXY_VERSION"
    fi
    MITMDUMP="$venv/bin/mitmdump"
fi
export MITMDUMP
echo "bench-compare: mitmdump: $MITMDUMP ($("$MITMDUMP" --version 2>/dev/null | head -n 1))" >&2
echo "bench-compare: load average before the build: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

exec cargo bench --bench compare -- "$@"
