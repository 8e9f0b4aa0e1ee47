#!/usr/bin/env bash
# Measure `btcstream infra up`: first run (empty Maven repository, empty jar cache, fresh state)
# and warm runs (jars cached, data kept), plus each service's resident memory once healthy.
# Uses its own HOME and ports (29092/29093, 29000, 29870) so it never touches your stack.
# Usage: bash bench/infra_startup.sh [warm-runs]   -> prints a markdown table on stdout
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
runs=${1:-3}
scratch=$(mktemp -d /tmp/btcstream-infra-bench.XXXXXX)
export HOME=$scratch MAVEN_OPTS="-Dmaven.repo.local=$scratch/m2"  # Maven reads user.home, not HOME: point it at an empty repository
export BTCSTREAM_KAFKA_BOOTSTRAP=127.0.0.1:29092 BTCSTREAM_STORAGE_ROOT=hdfs://localhost:29000/bitcoin \
       BTCSTREAM_WEBHDFS_PORT=29870 BTCSTREAM_STATE_DIR=$scratch/state BTCSTREAM_CACHE_DIR=$scratch/cache
trap '$BIN/btcstream infra down >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
seconds() { local t0=$(date +%s.%N); "$@" >/dev/null 2>&1; echo "$(date +%s.%N) - $t0" | bc; }
echo "| run | seconds |"
echo "|---|---|"
echo "| first (resolve jars from Maven Central, format storage, start) | $(seconds $BIN/btcstream infra up) |"
$BIN/btcstream infra status | awk 'NR>1 {print "| rss MiB " $1 " | " $4 " |"}'
for i in $(seq 1 "$runs"); do
  $BIN/btcstream infra down >/dev/null 2>&1
  echo "| warm $i (cached jars, existing data) | $(seconds $BIN/btcstream infra up) |"
done
$BIN/btcstream infra status | awk 'NR>1 {print "| rss MiB after warm start " $1 " | " $4 " |"}'
