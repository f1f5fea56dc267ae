#!/usr/bin/env bash
# The quick-start demo: a counting process is checkpointed with `cedana dump process`, stopped,
# restored with `cedana restore process`, and shown to carry on from where it was.
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$HERE/.venv}"
CEDANA="$VENV/bin/cedana"
WORK="$(mktemp -d /tmp/cedana-demo.XXXXXX)"
PID=""

cleanup() {
  [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null || true
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
say "demo passed"
