#!/usr/bin/env bash
# MLOps loop throughput recorded in docs/BENCHMARKS.md:
#   tests/bench/mlops.sh [BUILD_DIR] [N_RATINGS]
# Starts a throwaway PostgreSQL (tests/integration/pgfixture.py: fsync off),
# generates N ratings with `cinematch synth` (+ one drift batch of N/5), and
# times, in the same run:
#   baseline  psql \copy of the same CSV into an unconstrained temp table
#             (PostgreSQL's raw COPY speed on this box)
#   ingest    --target ratings --split temporal-user:0.2 (initial load) and
#             --target buffer (the drift batch): parse, validate, COPY,
#             constraints and indexes of the real tables
#   drift     one `cinematch drift` run (baseline = train ratings, current =
#             buffer)
# and prints rows/s and the ratio to the baseline.
set -eu
B=${1:-build}
N=${2:-1000000}
CM="$(cd "$(dirname "$B/cinematch")" && pwd)/cinematch"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
T=$(mktemp -d /tmp/cm-bench-mlops.XXXXXX)
PG_PID=
cleanup() {
    [ -n "$PG_PID" ] && kill -TERM "$PG_PID" 2>/dev/null && wait "$PG_PID" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT

# the server is stopped (and its directory removed) when python gets SIGTERM
/usr/bin/python3 -c '
import signal, sys
sys.path.insert(0, sys.argv[1])
from pgfixture import PgServer
pg = PgServer().start()
def stop(*_):
    pg.stop()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print(pg.dsn(), flush=True)
while True:
    signal.pause()
' "$ROOT/tests/integration" > "$T/pg.out" 2>&1 &
PG_PID=$!
for _ in $(seq 100); do [ -s "$T/pg.out" ] && break; sleep 0.2; done
DSN=$(head -1 "$T/pg.out")
export CINEMATCH_PG_DSN="$DSN" CINEMATCH_MODEL_STORE="$T/models"
now() { date +%s.%N; }
rate() { python3 -c "print('%.0f' % ($1 / ($3 - $2)))"; }

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$CM" synth --out "$T/d" --users $((N / 160)) --items 9000 --ratings "$N" \
    --drift-batches 1 --batch-ratings $((N / 5)) > /dev/null
ROWS=$(($(wc -l < "$T/d/ratings.csv") - 1))
BROWS=$(($(wc -l < "$T/d/batches/week_001.csv") - 1))
"$CM" migrate --dir "$ROOT/sql" > /dev/null
"$CM" ingest --movies "$T/d/movies.csv" > /dev/null

t0=$(now)
psql -X -q -v ON_ERROR_STOP=1 -d "$DSN" -c "CREATE TEMP TABLE raw (u int, m int, r numeric(2,1), t bigint)" \
      -c "\\copy raw FROM '$T/d/ratings.csv' CSV HEADER"
t1=$(now)
base=$(rate "$ROWS" "$t0" "$t1")
"$CM" ingest --data "$T/d/ratings.csv" --target ratings \
    --split temporal-user:0.2 > /dev/null
t2=$(now)
init=$(rate "$ROWS" "$t1" "$t2")
"$CM" ingest --data "$T/d/batches/week_001.csv" > /dev/null
t3=$(now)
buf=$(rate "$BROWS" "$t2" "$t3")
"$CM" drift > /dev/null
t4=$(now)

printf "%-44s %12s %8s\n" "step ($ROWS + $BROWS ratings)" "rows/s" "ratio"
printf "%-44s %12s %8s\n" "baseline: psql \\copy into a bare temp table" "$base" "1.00"
printf "%-44s %12s %8s\n" "ingest --target ratings (initial, split)" "$init" \
    "$(python3 -c "print('%.2f' % ($init / $base))")"
printf "%-44s %12s %8s\n" "ingest --target buffer (weekly batch)" "$buf" \
    "$(python3 -c "print('%.2f' % ($buf / $base))")"
python3 -c "print('%-44s %11.2fs' % ('drift: train ratings vs buffer', $t4 - $t3))"
