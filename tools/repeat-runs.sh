#!/usr/bin/env bash
# Run N short 2-process torchrun trainings (gloo on CPU, generated data) one after another and
# count the ones that did not exit 0: the check that finished runs always exit cleanly (a gloo
# worker thread racing interpreter shutdown used to abort about 3 runs in 100 with SIGABRT).
#
#   tools/repeat-runs.sh [N]        # default 30; logs of failed runs stay in $REPEAT_OUT
#
# Exit status 0 only when all N runs exited 0.
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:-30}
PYTHON=${PYTHON:-python3}
OUT=${REPEAT_OUT:-$(mktemp -d -t dist_rnn-repeat-XXXX)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
"$PYTHON" - "$OUT/data" <<'EOF' || exit 1
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import write_mnist  # the tests' generated IDX files: 5000 train, 1001 test

write_mnist(Path(sys.argv[1]), n_train=5000, n_test=1001)
EOF
failed=0
for i in $(seq 1 "$N"); do
  rm -rf "$OUT/run"
  "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=2 -m dist_rnn.train --device cpu \
    --data-dir "$OUT/data" --out-dir "$OUT/run" --max-steps 30 --hidden-size 48 --log-every 10 --save-every 20 \
    --dropout 0.3 >"$OUT/log-$i.txt" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then
    rm "$OUT/log-$i.txt"
  else
    failed=$((failed + 1))
    echo "run $i: exit $rc ($(grep -m1 -o 'terminate called[^"]*\|exitcode *: *[-0-9]*' "$OUT/log-$i.txt"); log: $OUT/log-$i.txt)"
  fi
done
echo "$failed of $N runs did not exit 0"
[ "$failed" -eq 0 ]
