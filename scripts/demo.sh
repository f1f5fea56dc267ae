#!/usr/bin/env bash
# The quick-start demo, in two acts (about a minute once `make setup` is done):
# 1. a counting process is checkpointed with `cedana dump process`, stopped, restored with
#    `cedana restore process`, and shown to carry on from where it was;
# 2. the daemon on a private local store: a job holding 32 MiB is dumped twice into the mount,
#    `ls` shows jobs/<job>/ with `latest`, the second checkpoint adds only a few KiB to the store,
#    and a lazy restore brings the job back, counting on. Everything is cleaned up at the end.
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$HERE/.venv}"
CEDANA="$VENV/bin/cedana"
WORK="$(mktemp -d /tmp/cedana-demo.XXXXXX)"
PID=""
DAEMON=""

cleanup() {
  [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null || true
  if [ -n "$DAEMON" ]; then
    "$CEDANA" kill --all >/dev/null 2>&1 || true
    "$CEDANA" daemon stop >/dev/null 2>&1 || kill "$DAEMON" 2>/dev/null || true
    wait "$DAEMON" 2>/dev/null || true
  fi
  mountpoint -q "$WORK/mnt" 2>/dev/null && fusermount3 -u -z "$WORK/mnt" || true
  rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "cedana check"
"$CEDANA" check

say "start a process that counts into $WORK/count.txt"
setsid "$VENV/bin/python" "$HERE/tests/programs/counter.py" "$WORK/count.txt" --interval 0.1 \
  </dev/null >/dev/null 2>&1 &
PID=$!
disown "$PID"
sleep 2
echo "PID $PID has counted to $(tail -n1 "$WORK/count.txt")"

say "cedana dump process $PID --dir $WORK --name demo --compression gzip"
"$CEDANA" dump process "$PID" --dir "$WORK" --name demo --compression gzip
ls -l "$WORK/demo.tar.gz"
sleep 1
AT_DUMP="$(tail -n1 "$WORK/count.txt")"
if kill -0 "$PID" 2>/dev/null && [ "$(ps -o stat= -p "$PID" | cut -c1)" != Z ]; then
  echo "demo: the process should have stopped at the dump" >&2; exit 1
fi
echo "the process is gone; its count stopped at $AT_DUMP"

say "cedana restore process --path $WORK/demo.tar.gz"
"$CEDANA" restore process --path "$WORK/demo.tar.gz" --pid-file "$WORK/pid"
PID="$(cat "$WORK/pid")"
sleep 2
NOW="$(tail -n1 "$WORK/count.txt")"
echo "restored PID $PID is counting again: $AT_DUMP -> $NOW"
"$VENV/bin/python" - "$WORK/count.txt" "$AT_DUMP" <<'PY'
import sys
values = [int(x) for x in open(sys.argv[1]).read().split()]
at_dump = int(sys.argv[2])
assert values == list(range(1, len(values) + 1)), "the count restarted or skipped"
assert values[-1] > at_dump, "the restored process is not counting"
print(f"continued from {at_dump + 1}, no restart, no gap: {len(values)} values in order")
PY

# --- act 2: the daemon, the mount, deduplication and lazy restore ---
export CEDANA_CONFIG_DIR="$WORK/cfg" CEDANA_ADDRESS="$WORK/cedana.sock" CEDANA_MOUNT_DIR="$WORK/mnt" \
  CEDANA_DB_PATH="$WORK/db/cedana.db" CEDANA_STORE_URL="$WORK/store" CEDANA_CACHE_DIR="$WORK/cache" \
  CEDANA_JOB_LOG_DIR="$WORK"
mkdir -p "$WORK/cfg"

say "cedana daemon start (private socket, store and mount under $WORK)"
"$CEDANA" daemon start >"$WORK/daemon.log" 2>&1 &
DAEMON=$!
for _ in $(seq 100); do "$CEDANA" daemon check >/dev/null 2>&1 && break; sleep 0.2; done
"$CEDANA" daemon check

say "cedana run process --jid demo -- python (32 MiB of data, counting into $WORK/job.txt)"
"$CEDANA" run process --jid demo -- "$VENV/bin/python" -c '
import os, sys, time
blob = os.urandom(32 << 20)  # what the checkpoints must carry
n = 0
while True:
    n += 1
    open(sys.argv[1], "a").write(f"{n}\n")
    time.sleep(0.1)
' "$WORK/job.txt"
sleep 2

say "cedana dump job demo --leave-running   (first checkpoint, into the mount)"
"$CEDANA" dump job demo --leave-running
sleep 1
say "cedana dump job demo   (second checkpoint; the job stops)"
"$CEDANA" dump job demo
AT_DUMP="$(tail -n1 "$WORK/job.txt")"

say "ls -l $WORK/mnt/jobs/demo/"
ls -l "$WORK/mnt/jobs/demo/"
"$CEDANA" job checkpoints demo

say "what the second checkpoint added to the store"
"$VENV/bin/python" - <<'PY'
import json, subprocess, sys
cedana = [sys.executable, "-m", "cedanafs.cli"]
ids = [c["id"] for c in json.loads(subprocess.check_output([*cedana, "job", "checkpoints", "demo", "-O", "json"]))]
def info(cid):
    return json.loads(subprocess.check_output([*cedana, "checkpoint", "inspect", f"demo/{cid}", "-O", "json"]))
second, first = info(ids[0]), info(ids[1])
mib = lambda n: f"{n / (1 << 20):.1f} MiB"
print(f"first checkpoint:  {mib(first['logical_bytes'])} of images, stored {mib(first['stored_bytes'])}")
print(f"second checkpoint: {mib(second['logical_bytes'])} of images, of which only"
      f" {second['exclusive_stored_bytes'] / 1024:.0f} KiB are new in the store (the rest is shared)")
PY

say "cedana restore job demo --lazy   (runs before its memory is back)"
"$CEDANA" restore job demo --lazy
sleep 2
NOW="$(tail -n1 "$WORK/job.txt")"
echo "the restored job is counting again: $AT_DUMP -> $NOW"
"$VENV/bin/python" - "$WORK/job.txt" "$AT_DUMP" <<'PY'
import sys
values = [int(x) for x in open(sys.argv[1]).read().split()]
at_dump = int(sys.argv[2])
assert values == list(range(1, len(values) + 1)), "the count restarted or skipped"
assert values[-1] > at_dump, "the restored job is not counting"
print(f"continued from {at_dump + 1}: {len(values)} values in order")
PY
"$CEDANA" job list

say "demo passed (cleaning up: the job, the daemon, its mount and $WORK)"
