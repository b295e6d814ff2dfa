"""The summary of tools/gpu-check.sh: every figure the GPU targets name, read from the check's
output folder, each against its target; exit status 1 when a step failed or a target was missed.

    python tools/gpu_check_summary.py OUT SECONDS STATUS "GPU NAME / torch VERSION"
"""

import json
import re
import sys
from pathlib import Path

out, seconds, status, gpu = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
misses = []


def target(text: str, value, floor, higher: bool = True, fmt: str = ",.0f") -> str:
    """`text: value (target >= floor)`, noting a miss."""
    if value is None:
        misses.append(f"{text}: not measured")
        return f"{text}: not measured"
    met = value >= floor if higher else value <= floor
    if not met:
        misses.append(text)
    return f"{text}: {value:{fmt}} (target {'>=' if higher else '<='} {floor:{fmt}}{'' if met else ', MISSED'})"


def read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


print(f"\nGPU check: {gpu}, {seconds} s (target <= 360)")
logs = sorted(out.glob("cuda-tests-?.log")) or sorted(out.glob("cuda-tests.log"))  # 4 processes, or xdist's one
tests = [line for f in logs for line in f.read_text().strip().splitlines()[-1:]]
print(f"  cuda tests: {'; '.join(tests) or 'no output'}")
floors = {"seed-lstm": 0.96, "seed-bilstm": 0.97}
for preset in floors:
    for graphs in ("off", "on"):
        r = read(out / f"{preset}-graphs-{graphs}" / "results.json")
        if r:
            print("  " + target(f"{preset} fp32, CUDA graphs {graphs}: test accuracy", r["test_accuracy"],
                                floors[preset], fmt=".4f") + f"; {r['train_samples_per_s']:,.0f} train samples/s")
        else:
            misses.append(f"{preset} graphs {graphs}: no results")
probe = {}
for model in ("uni", "bi"):
    log = out / f"probe-{model}.log"
    for line in (log.read_text().splitlines() if log.exists() else []):
        found = re.search(r"^\w+ (.+?)\s+bs=\s*(\d+) samples_per_s=\s*(\d+)", line)
        if found:
            probe[(model, found[1].strip(), int(found[2]))] = float(found[3])
b = read(out / "bench.json")
if b:
    def speed(name: str):
        """A variant's median samples/s, or None where the bench did not measure it (left out, failed)."""
        return b.get(name + "_median")

    def shown(value) -> str:
        return "not measured" if value is None else f"{value:,.0f}"

    print(f"  bench ({b['steps']} steps x {b['repeats']}, steady samples/s, median): original "
          f"{b['original_median']:,.0f}; " + ", ".join(f"{name} {shown(speed(name))}" for name in b["variants"])
          + "".join(f"; left out: {name} ({why})" for name, why in b.get("skipped_variants", {}).items()))
    for preset, model, graphed, b1000, floor in (("seed-lstm", "uni", "dist_rnn_graphed", "dist_rnn_graphed_b1000",
                                                  300_000),
                                                 ("seed-bilstm", "bi", "bilstm_graphed", "bilstm_graphed_b1000", 170_000)):
        ceiling = probe.get((model, "cudagraph adam(fused,capt)", 100))
        ratio = speed(graphed) / ceiling if ceiling and speed(graphed) else None
        print("  " + target(f"{preset} graphed / probe's CUDA graph + fused capturable Adam "
                            f"({shown(speed(graphed))} / {shown(ceiling)})", ratio, 0.85, fmt=".2f"))
        print("  " + target(f"{preset} graphed, batch 1000, samples/s", speed(b1000), floor))
    for preset, names in (("seed-lstm", ("dist_rnn", "dist_rnn_bf16", "dist_rnn_fp16")),
                          ("seed-bilstm", ("bilstm", "bilstm_bf16", "bilstm_fp16"))):
        fp32 = speed(names[0])
        print(f"  {preset} eager by precision: fp32 {shown(fp32)}" + "".join(
            f", {label} {shown(speed(name))}" + (f" ({speed(name) / fp32:.2f}x)" if fp32 and speed(name) else "")
            for label, name in (("bf16", names[1]), ("fp16", names[2]))))
    print("  " + target("time to first step, s", b.get("seconds_to_first_step"), 5, higher=False, fmt=".2f")
          + f"; evaluation {shown(b.get('eval_samples_per_s'))} samples/s")
else:
    misses.append("bench: no figures")
for (model, name, bs), value in sorted(probe.items()):
    print(f"  probe {model} {name}, batch {bs}: {value:,.0f} samples/s")
log = out / "rnn-precision.log"
for line in (log.read_text().splitlines() if log.exists() else []):
    print(f"  cuDNN {line}")  # which half-precision LSTM, if any, beats fp32 (decides --precision bf16)
for graphs in ("off", "on"):
    log = out / f"sync-audit-graphs-{graphs}.log"
    lines = log.read_text().splitlines() if log.exists() else []
    verdict = next((line for line in lines if line.startswith("sync audit:")), None)
    print(f"  CUDA graphs {graphs}: {verdict or 'sync audit: no result'}")
    counts = re.match(r"sync audit: (\d+) syncs in the steady loop .*, (\d+) in all", verdict or "")
    if not counts or int(counts[1]) != 0 or int(counts[2]) == 0:
        misses.append(f"sync audit, graphs {graphs}")
if seconds > 360:
    misses.append("the check's time")
print(f"  result: {'PASS' if status == 0 and not misses else 'FAIL'}"
      + (" (steps failed: see above)" if status else "") + (f"; missed: {'; '.join(misses)}" if misses else ""))
sys.exit(0 if status == 0 and not misses else 1)
