#!/usr/bin/env bash
# Recommender accuracy and speed runs recorded in docs/BENCHMARKS.md.
#   tests/bench/recsys.sh [BUILD_DIR] [DATA_DIR]
# Needs the real ml-latest-small (never committed); skips when absent.
# Hyper-parameters were picked with `eval recsys --validate` (a validation
# part carved from train the same way), never on the test part.
set -u
B=${1:-build}
D=${2:-../shared/data/ml-latest-small}
CM="$B/cinematch"
if [ ! -f "$D/ratings.csv" ]; then
    echo "SKIP: $D/ratings.csv absent (real MovieLens data not here)"; exit 0
fi
mean_rmse() {
    python3 -c '
import json, sys
r = [json.loads(l) for l in sys.stdin]
print("  per seed:", " ".join("%.4f" % o["rmse"] for o in r))
print("  mean RMSE %.4f  MAE %.4f  train %.2f s" % (
    sum(o["rmse"] for o in r) / len(r), sum(o["mae"] for o in r) / len(r),
    sum(o["train_seconds"] for o in r) / len(r)))'
}
echo "== accuracy: random:0.2:SEED, seeds 1..5 =="
for a in "bias --reg 2" \
         "als --factors 64 --iters 15 --reg 0.12" \
         "als --factors 64 --iters 15 --reg 2 --reg-exp 0.4 --bias-reg 0.5" \
         "als --factors 64 --iters 15 --reg 2 --reg-exp 0.4 --bias-reg 0.5 --knn-blend 1.5 --knn 500"; do
    echo "$a"
    for s in 1 2 3 4 5; do
        $CM eval recsys --data "$D" --threads 2 --split random:0.2:$s --json \
            --algo $a
    done | mean_rmse
done
echo "== ranking: temporal-user:0.2, K=10 =="
for a in "pop" "itemknn --knn 100 --sim-shrink 0 --conf-threshold 0" \
         "itemknn --knn 30 --sim-shrink 30 --conf-threshold 0" \
         "itemknn --knn 30 --sim-shrink 30 --conf-threshold 4 --conf-below 0" \
         "als --factors 64 --reg 2 --reg-exp 0.4 --bias-reg 0.5" \
         "ials --factors 64 --iters 10 --alpha 1 --reg 30 --conf-threshold 0" \
         "ials --factors 64 --iters 10 --alpha 1.5 --reg 40 --conf-threshold 4 --conf-below 0" \
         "ials --factors 64 --iters 10 --alpha 1.5 --reg 40 --conf-threshold 4 --conf-below 0 --cg 3"; do
    $CM eval recsys --data "$D" --threads 2 --split temporal-user:0.2 \
        --algo $a
done
echo "== speed: ALS 64 factors x 15 iterations vs the no-BLAS reference =="
for i in 1 2 3; do
    $CM bench recsys --data "$D" --factors 64 --iters 15 --threads 2 \
        --ref-iters 2 --reg 0.12
done
uptime
