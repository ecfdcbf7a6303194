"""Is the paired comparison trustworthy? Simulated false-positive rates and power of the paired
design against the unpaired one it replaced, then a real A/A and A/B on this machine.

1. Simulation (`measure.timing_simulation`): a machine with drift between runs, drift inside a
   run, noise and outliers; over many simulated experiments, how often an A/A comparison comes
   out "significant" (should be ≤ 5%) and how often a true 20% slowdown does (power).
2. Real, SmolLM2-135M (fp32): A/A = the model against a second, independent copy of itself on
   the same windows (the protocol `comparison_run` uses: calibration, warm-up, ABBA/BAAB pairs,
   CPU-time energy); A/B = the same model where B does 1.3× the work (13 short windows for every
   10 of A), which must come out significant with a ratio near 1.3.

    .venv/bin/python benchmarks/paired_timing.py [--pairs 10] [--min-seconds 1.0] [--experiments 2000]
"""

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmopt_assets.measure.comparison import ComparisonProtocol, run_comparison  # noqa: E402
from llmopt_assets.measure.corpus import WIKITEXT2_RAW_TEST, corpus_text, tokenize_stream  # noqa: E402
from llmopt_assets.measure.energy.cpu_time import CpuTimeMeter  # noqa: E402
from llmopt_assets.measure.runs import window_batches, window_work  # noqa: E402
from llmopt_assets.measure.stats import PairedRatio, paired_ratio  # noqa: E402
from llmopt_assets.measure.timing_simulation import NoisyMachine, simulate  # noqa: E402

MACHINES = {
    "default (run spread 5%, drift 0.2%/rep, noise 2%, 2% outliers +10-50%)": NoisyMachine(),
    "harsh (run spread 10%, 5% outliers +20-100%)": NoisyMachine(
        run_spread=0.10, outlier_rate=0.05, outlier_slowdown=(0.2, 1.0)),
    "quiet (no drift between or inside runs, no outliers)": NoisyMachine(run_spread=0.0, drift=0.0, outlier_rate=0.0),
}


def simulated(experiments: int) -> None:
    print(f"Simulated: share of {experiments} experiments called significant at 5% "
          "(A/A: false positives, want ≤ 5%; ×1.2: power, want high)")
    print(f"{'machine':72s} {'pairs':>5s} {'A/A paired':>10s} {'A/A unpaired':>12s} {'×1.2 paired':>11s} "
          f"{'×1.2 unpaired':>13s}")
    for name, machine in MACHINES.items():
        for pairs in (6, 10, 30):
            null = simulate(machine, 1.0, pairs, experiments, seed=pairs)
            slower = simulate(machine, 1.2, pairs, experiments, seed=100 + pairs)
            print(f"{name:72s} {pairs:5d} {null.paired:10.3f} {null.unpaired:12.3f} {slower.paired:11.3f} "
                  f"{slower.unpaired:13.3f}")


def describe(label: str, ratio: PairedRatio) -> str:
    verdict = "significant" if ratio.significant else "not significant"
    return (f"{label} {ratio.ratio:.4f} [{ratio.ci95_low:.4f}, {ratio.ci95_high:.4f}] p={ratio.p_value:.3g} "
            f"{verdict}")


def real(pairs: int, min_seconds: float, window: int) -> None:
    from llmopt_assets.models.registry import load_registry
    from llmopt_assets.models.sources import load_source

    model, tokenizer = load_source(load_registry()["smollm2-135m"])
    model.eval()
    tokens = tokenize_stream(tokenizer, corpus_text(WIKITEXT2_RAW_TEST))
    protocol = ComparisonProtocol(pairs=pairs, min_repetition_seconds=min_seconds, max_warmup_rounds=5, seed=0)
    second = copy.deepcopy(model)  # an independent copy: its own tensors, the same weights

    def report(label: str, base, variant) -> None:
        started = time.perf_counter()
        result = run_comparison(base, variant, CpuTimeMeter(), protocol)
        c = result.calibration
        time_ratio = paired_ratio(result.values("variant"), result.values("base"))
        energy_ratio = paired_ratio(result.values("variant", "joules"), result.values("base", "joules"))
        print(f"{label}: {time.perf_counter() - started:.0f} s in all; {c.units} units per repetition after "
              f"{len(c.rounds)} calibration/warm-up rounds ({'stable' if c.stable else 'NOT stable'}); "
              f"{pairs} pairs")
        print("  " + describe("Tc", time_ratio) + f", spread of ln ratios {time_ratio.log_ratio_std:.4f}")
        print("  " + describe("Ec (CPU-time estimate)", energy_ratio))

    print(f"\nReal, SmolLM2-135M fp32, min repetition {min_seconds} s, {pairs} pairs, CPU-time energy")
    batches = window_batches(tokens, window, "cpu")
    report(f"A/A (windows of {window} tokens, a second copy)", window_work(model, batches), window_work(second, batches))
    del second
    short = window_work(model, window_batches(tokens, 64, "cpu"))
    report("A/B, B does 1.3× the work (units of 10 vs 13 windows of 64 tokens)",
           lambda units: short(10 * units), lambda units: short(13 * units))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--window", type=int, default=512, help="A/A window length (the smoke profile's)")
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    simulated(args.experiments)
    if not args.skip_real:
        real(args.pairs, args.min_seconds, args.window)


if __name__ == "__main__":
    main()
