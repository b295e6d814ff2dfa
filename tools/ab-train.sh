#!/usr/bin/env bash
# The same CPU training at two commits, alternated: the check that a change costs no speed. Each
# commit runs from its own git worktree (removed afterwards); prints train samples/s per run and
# the medians, for 1 process and for torchrun x 2.
#
#   tools/ab-train.sh BEFORE AFTER [ALTERNATIONS]     # e.g. tools/ab-train.sh bd26480 734503e 3
#
# Runs `--preset seed-lstm --max-steps 300 --limit-test 1000 --device cpu` on $DIST_RNN_DATA
# (default ../shared/data/mnist); about 4 minutes for 3 alternations on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BEFORE=$1 AFTER=$2 N=${3:-3}
PYTHON=${PYTHON:-$PWD/.venv/bin/python}
DATA=$(cd "${DIST_RNN_DATA:-../shared/data/mnist}" && pwd)
WORK=$(mktemp -d -t dist_rnn-ab-XXXX)
trap 'git worktree remove --force "$WORK/before" 2>/dev/null; git worktree remove --force "$WORK/after" 2>/dev/null; rm -rf "$WORK"' EXIT
git worktree add -q --detach "$WORK/before" "$BEFORE"
git worktree add -q --detach "$WORK/after" "$AFTER"
# Each side must run its own code: a module missing from a worktree would otherwise be found in the
# editable install (its finder serves any dist_rnn.* name PYTHONPATH lacks) and mix the two commits.
for side in before after; do
  (cd "$WORK/$side" && PYTHONPATH="$WORK/$side" "$PYTHON" - "$WORK/$side" <<'PY'
import importlib, pkgutil, sys
import dist_rnn
for info in pkgutil.walk_packages(dist_rnn.__path__, "dist_rnn."):
    importlib.import_module(info.name)
outside = sorted(m.__file__ for n, m in sys.modules.items()
                 if n.startswith("dist_rnn") and getattr(m, "__file__", None) and not m.__file__.startswith(sys.argv[1]))
sys.exit(f"ab-train.sh: this side imports dist_rnn code from outside its worktree: {outside}" if outside else 0)
PY
  ) || exit 2
done
for i in $(seq 1 "$N"); do
  for side in before after; do
    for nproc in 1 2; do
      if [ "$nproc" = 1 ]; then launch=("$PYTHON" -m dist_rnn.train)
      else launch=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=2 -m dist_rnn.train); fi
      out="$WORK/run-$side-$nproc-$i"
      (cd "$WORK/$side" && PYTHONPATH="$WORK/$side" "${launch[@]}" --preset seed-lstm --max-steps 300 \
        --limit-test 1000 --device cpu --data-dir "$DATA" --out-dir "$out" --resume none --overwrite >/dev/null 2>&1)
      echo "$side $nproc $("$PYTHON" -c "import json, sys; print(round(json.load(open(sys.argv[1]))['train_samples_per_s']))" "$out/results.json")"
    done
  done
done | tee "$WORK/all.txt"
"$PYTHON" - "$WORK/all.txt" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    side, nproc, rate = line.split()
    runs[side, nproc].append(int(rate))
for nproc in ("1", "2"):
    b, a = statistics.median(runs["before", nproc]), statistics.median(runs["after", nproc])
    print(f"{nproc} process(es): before {runs['before', nproc]} median {b:.0f}; "
          f"after {runs['after', nproc]} median {a:.0f}; ratio {a / b:.2f}x")
PY
