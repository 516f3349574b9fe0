#!/usr/bin/env bash
# Installs the Beam runners the project runs on besides the DirectRunner, at the version of the
# installed apache-beam (an SDK is never mixed with another version's runner):
#   prism   Beam's Prism runner, built from Beam's Go module into .tools/prism/v<version>/prism,
#           where the pipeline commands look for it (pipelines/runners.py).
# Usage: scripts/install_runners.sh [prism ...]   (no argument: every runner)
# Idempotent and cached: a runner already installed at that version is not fetched or built again.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$root/.venv/bin/python}"

beam_version() {
    "$PYTHON" -c 'import apache_beam; print(apache_beam.__version__)' 2>/dev/null \
        || { echo "install_runners.sh: apache-beam is not installed in $PYTHON (run scripts/test.sh or ./run_local.sh first)" >&2; exit 1; }
}

# --- Prism ----------------------------------------------------------------------------------
# Built with `go install github.com/apache/beam/sdks/v2/go/cmd/prism@v<version>`; the Go module and
# build caches live in .tools/go, so a second install (or another version's) reuses the downloads.
# The binary is not put in Beam's own cache (~/.apache_beam/cache/prism/bin): there Beam's
# DirectRunner would find it too and silently run every batch pipeline on Prism instead of its
# FnApiRunner. The pipeline commands pass it as --prism_location when Prism is the runner.
install_prism() {
    local version dest bin gocache
    version="$(beam_version)"
    dest="$root/.tools/prism/v$version"
    bin="$dest/prism"
    if [ -x "$bin" ]; then
        echo "prism v$version already installed: $bin"
        return 0
    fi
    command -v go >/dev/null 2>&1 || { echo "install_runners.sh: go not found; Prism is built from Beam's Go module (install Go 1.24+, e.g. apt-get install golang)" >&2; return 1; }
    gocache="$root/.tools/go"
    mkdir -p "$dest" "$gocache"
    echo "building prism v$version (go install github.com/apache/beam/sdks/v2/go/cmd/prism@v$version; the first build takes a few minutes)" >&2
    # The Go checksum database has no entry for some Beam releases the module proxy serves (here:
    # v2.62.0). Skipping it for Beam's module takes an explicit PRISM_SKIP_CHECKSUM_DB=1.
    local nosumdb="${GONOSUMDB:-}"
    if [ "${PRISM_SKIP_CHECKSUM_DB:-}" = 1 ]; then
        echo "install_runners.sh: PRISM_SKIP_CHECKSUM_DB=1: Beam's Go module is not checked against the Go checksum database" >&2
        nosumdb="github.com/apache/beam${nosumdb:+,$nosumdb}"
    fi
    if ! GOBIN="$dest.tmp" GOMODCACHE="$gocache/mod" GOCACHE="$gocache/build" GOFLAGS=-modcacherw \
            GONOSUMDB="$nosumdb" go install "github.com/apache/beam/sdks/v2/go/cmd/prism@v$version"; then
        echo "install_runners.sh: building prism v$version failed (if the Go checksum database has no entry for github.com/apache/beam/sdks/v2@v$version, PRISM_SKIP_CHECKSUM_DB=1 builds it unchecked)" >&2
        return 1
    fi
    mv "$dest.tmp/prism" "$bin"
    rmdir "$dest.tmp"
    "$bin" --help >/dev/null 2>&1 || { echo "install_runners.sh: $bin does not run" >&2; return 1; }
    echo "prism v$version installed: $bin"
}

# --- main -----------------------------------------------------------------------------------
runners=("$@")
[ ${#runners[@]} -gt 0 ] || runners=(prism)
for runner in "${runners[@]}"; do
    case "$runner" in
        prism) install_prism ;;
        *) echo "install_runners.sh: unknown runner '$runner' (known: prism)" >&2; exit 2 ;;
    esac
done
