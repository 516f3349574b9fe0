#!/usr/bin/env bash
# Installs the Beam runners the project runs on besides the DirectRunner, at the version of the
# installed apache-beam (an SDK is never mixed with another version's runner):
#   prism   Beam's Prism runner, built from Beam's Go module into .tools/prism/v<version>/prism,
#           where the pipeline commands look for it (pipelines/runners.py).
#   flink   Beam's Flink job server (embedded Flink), assembled with Maven into
#           .tools/flink/<version>/, where the pipeline commands look for it (pipelines/runners.py).
#   kafka   a Kafka broker for the tests of the kafka:// input (not a runner): the broker's and its
#           command-line tools' jars, assembled with Maven into .tools/kafka/<kafka version>/libs/,
#           where emulators/kafka.py looks for them.
# Usage: scripts/install_runners.sh [prism|flink|kafka ...]   (no argument: all three)
# Idempotent and cached: a runner already installed at that version is not fetched or built again.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$root/.venv/bin/python}"
CDP_CACHE="${CDP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cdp-activation}"
# Where the Flink job server and the Kafka broker go: .tools in the checkout, or CDP_TOOLS_DIR
# (pipelines/runners.py and emulators/kafka.py look there too). Prism always goes to .tools.
tools="${CDP_TOOLS_DIR:-$root/.tools}"

beam_version() {
    "$PYTHON" -c 'import apache_beam; print(apache_beam.__version__)' 2>/dev/null \
        || { echo "install_runners.sh: apache-beam is not installed in $PYTHON (run scripts/test.sh or ./run_local.sh first)" >&2; exit 1; }
}

# Java and Maven on PATH, or one line saying what needs them ($1) and a non-zero status.
require_java_and_maven() {
  command -v java >/dev/null || { echo "error: $1 needs java (a JDK 17) on PATH" >&2; return 1; }
  command -v mvn >/dev/null || { echo "error: installing $1 needs mvn (Maven) on PATH" >&2; return 1; }
}

# --- Prism ----------------------------------------------------------------------------------
# Built from Beam's Go module at the version pinned in scripts/prism/go.mod, which must equal the
# installed apache-beam's. scripts/prism/go.sum records the hash of every module it is built from,
# so the build checks each download against it (-mod=readonly) and needs no other lookup: the Go
# checksum database has no entry for some Beam releases the module proxy serves (v2.62.0 among
# them), and go.sum's hash for Beam's module was recorded from the proxy's download.
# The Go module and build caches live outside the checkout ($CDP_CACHE, default
# ~/.cache/cdp-activation), so a fresh clone rebuilds from cached downloads.
# The binary is not put in Beam's own cache (~/.apache_beam/cache/prism/bin): there Beam's
# DirectRunner would find it too and silently run every batch pipeline on Prism instead of its
# FnApiRunner. The pipeline commands pass it as --prism_location when Prism is the runner.
install_prism() {
    local version pinned dest bin
    version="$(beam_version)"
    pinned="$(sed -n 's/^require github.com\/apache\/beam\/sdks\/v2 v\(.*\)$/\1/p' "$root/scripts/prism/go.mod")"
    if [ "$pinned" != "$version" ]; then
        echo "install_runners.sh: scripts/prism/go.mod pins Beam's Go module at v$pinned but apache-beam $version is installed; an SDK never runs on another version's runner (change both together)" >&2
        return 1
    fi
    dest="$root/.tools/prism/v$version"
    bin="$dest/prism"
    if [ -x "$bin" ]; then
        echo "prism v$version already installed: $bin"
        return 0
    fi
    command -v go >/dev/null 2>&1 || { echo "install_runners.sh: go not found; Prism is built from Beam's Go module (install Go 1.23+, e.g. apt-get install golang)" >&2; return 1; }
    mkdir -p "$dest" "$CDP_CACHE/go"
    echo "building prism v$version from scripts/prism/go.mod (the first build takes a few minutes)" >&2
    if ! (cd "$root/scripts/prism" && GOMODCACHE="$CDP_CACHE/go/mod" GOCACHE="$CDP_CACHE/go/build" \
            GOFLAGS="-modcacherw -mod=readonly" go build -o "$bin.tmp" github.com/apache/beam/sdks/v2/go/cmd/prism); then
        echo "install_runners.sh: building prism v$version failed" >&2
        return 1
    fi
    mv "$bin.tmp" "$bin"
    "$bin" --help >/dev/null 2>&1 || { echo "install_runners.sh: $bin does not run" >&2; return 1; }
    echo "prism v$version installed: $bin"
}

# --- Flink ----------------------------------------------------------------------------------
# Beam's Flink job server (embedded Flink, `--flink_master=[local]`) for that apache-beam.
# Maven serves no beam-runners-flink-*-job-server jar here, so the job server is assembled from the
# runner artifact it is the shaded form of (scripts/flink-job-server/pom.xml): a jar whose manifest
# starts FlinkJobServerDriver, and lib/ with the runner and its dependencies. The layout and name
# are the ones pipelines/runners.py looks for:
#   .tools/flink/<beam version>/beam-runners-flink-<flink>-job-server-<beam version>.jar
#   .tools/flink/<beam version>/beam-expansion-service-<beam version>.jar  (Beam's Java expansion
#       service on the same lib/, which holds KafkaIO: the kafka:// input is expanded there)
#   .tools/flink/<beam version>/lib/*.jar
# .installed records the pom's checksum: an install made from another pom is made again.
FLINK_MINOR="${FLINK_MINOR:-1.19}"
install_flink() {
  local version dir jar expansion build recipe
  version="$(beam_version)"
  dir="$tools/flink/$version"
  jar="$dir/beam-runners-flink-$FLINK_MINOR-job-server-$version.jar"
  expansion="$dir/beam-expansion-service-$version.jar"
  recipe="$(sha256sum "$root/scripts/flink-job-server/pom.xml" | cut -d' ' -f1)"
  if [ -f "$jar" ] && [ -f "$expansion" ] && [ "$(cat "$dir/.installed" 2>/dev/null)" = "$recipe" ]; then
    echo "flink job server $version: $jar (installed)"
    return 0
  fi
  require_java_and_maven "the Flink job server" || return 1
  echo "installing the Flink $FLINK_MINOR job server for Beam $version (Maven) into $dir" >&2
  build="$dir.build.$$"
  rm -rf "$build"
  if ! mvn -B -q -Dstyle.color=never -f "$root/scripts/flink-job-server/pom.xml" package \
      -Dbeam.version="$version" -Dflink.minor="$FLINK_MINOR" -Dout.dir="$build" >&2; then
    rm -rf "$build"
    echo "error: Maven could not resolve org.apache.beam:beam-runners-flink-$FLINK_MINOR:$version" \
         "and its dependencies; the Flink runner needs an apache-beam version whose runner Maven" \
         "serves (docs/RUNNERS.md)" >&2
    return 1
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  mv "$build/$(basename "$jar")" "$jar"
  mv "$build/$(basename "$jar" .jar)-expansion-service.jar" "$expansion"
  mv "$build/lib" "$dir/lib"
  rm -rf "$build"
  echo "$recipe" > "$dir/.installed"
  echo "flink job server $version: $jar"
  echo "java expansion service $version (KafkaIO): $expansion"
}

# --- Kafka broker -----------------------------------------------------------------------------
# A single-node KRaft broker started from its jars by emulators/kafka.py (tests/test_kafka_flink.py):
# Maven copies org.apache.kafka:kafka_2.13 and kafka-tools at KAFKA_VERSION, with their
# dependencies, into .tools/kafka/<version>/libs/ (scripts/kafka-broker/pom.xml). Kafka 4 brokers
# run on Java 17. The version is the project's choice, not Beam's: Beam's KafkaIO talks to it
# with its own kafka-clients (scripts/flink-job-server/pom.xml).
KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
install_kafka() {
  local dir build
  dir="$tools/kafka/$KAFKA_VERSION"
  if [ -f "$dir/.installed" ] && [ -d "$dir/libs" ]; then
    echo "kafka broker $KAFKA_VERSION: $dir/libs (installed)"
    return 0
  fi
  require_java_and_maven "the Kafka broker" || return 1
  echo "installing the Kafka $KAFKA_VERSION broker (Maven) into $dir" >&2
  build="$dir.build.$$"
  rm -rf "$build"
  if ! mvn -B -q -Dstyle.color=never -f "$root/scripts/kafka-broker/pom.xml" dependency:copy-dependencies \
      -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime -DoutputDirectory="$build/libs" >&2; then
    rm -rf "$build"
    echo "error: Maven could not resolve org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its dependencies" >&2
    return 1
  fi
  rm -rf "$dir"
  mv "$build" "$dir"
  touch "$dir/.installed"
  echo "kafka broker $KAFKA_VERSION: $dir/libs"
}

# --- main -----------------------------------------------------------------------------------
runners=("$@")
[ ${#runners[@]} -gt 0 ] || runners=(prism flink kafka)
for runner in "${runners[@]}"; do
    case "$runner" in
        prism) install_prism ;;
        flink) install_flink ;;
        kafka) install_kafka ;;
        *) echo "install_runners.sh: unknown runner '$runner' (known: prism, flink, kafka)" >&2; exit 2 ;;
    esac
done
