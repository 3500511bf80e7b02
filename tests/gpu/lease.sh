#!/usr/bin/env bash
# tests/gpu/lease.sh - all of tests/gpu/run.sh inside one short device lease: every stage under its own
# time limit (so a slow stage cannot eat the next one's), logs kept in a scratch folder and packed into
# one archive in $OUT at the end (the device tool returns at most 8 files). Usage on the lent machine:
#
#   bash tests/gpu/lease.sh [build_s test_s sanitize_s bench_s]     (defaults: 150 150 150 120)
set -u
cd "$(dirname "$0")/../.."
dest="${OUT:-out/gpu}"
logs="$(mktemp -d)"
lim=("${1:-150}" "${2:-150}" "${3:-150}" "${4:-120}")
export PYTHONUNBUFFERED=1
export PYTEST_ARGS="${PYTEST_ARGS:--n 4 --timeout 120}"
rc=0
if ! OUT="$logs" timeout "${lim[0]}" bash tests/gpu/run.sh build; then
  rc=1; tail -n 60 "$logs/build.log"  # the rest needs the build
else
  OUT="$logs" timeout "${lim[1]}" bash tests/gpu/run.sh test || rc=1
  OUT="$logs" timeout "${lim[2]}" bash tests/gpu/run.sh sanitize || rc=1
  OUT="$logs" timeout "${lim[3]}" bash tests/gpu/run.sh bench || rc=1
fi
mkdir -p "$dest"
tar czf "$dest/gpu_logs.tgz" -C "$logs" .
cp "$logs"/bench_gpu.md "$dest"/ 2>/dev/null
echo "lease.sh: exit $rc (logs in $dest/gpu_logs.tgz)"
exit $rc
