"""The same perplexity run measured by every energy meter, side by side, and the repetition
statistics of a 10-repetition run (issue 5's targets).

Each meter measures its own run of the same workload (a few WikiText-2 windows on SmolLM2-135M),
then all meters measure one shared run at once. On a machine without RAPL and NVML every number
is an estimate and says so; where a GPU or RAPL is present the counters appear.

    .venv/bin/python benchmarks/energy_meters.py [--windows 2] [--max-length 512] [--reps 10]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmopt_assets.measure.corpus import WIKITEXT2_RAW_TEST, corpus_text, tokenize_stream  # noqa: E402
from llmopt_assets.measure.energy import make_meter  # noqa: E402
from llmopt_assets.measure.hardware import hardware_info  # noqa: E402
from llmopt_assets.measure.perplexity import PerplexityProtocol, evaluate_perplexity  # noqa: E402
from llmopt_assets.measure.repetitions import RepetitionProtocol, run_repetitions  # noqa: E402
from llmopt_assets.measure.stats import summarize  # noqa: E402
from llmopt_assets.models.registry import load_registry  # noqa: E402
from llmopt_assets.models.sources import load_source  # noqa: E402

METERS = {
    "auto": ("auto", {}),
    "cpu-time": ("cpu-time", {}),
    "carbontracker": ("carbontracker", {}),
    "codecarbon-machine": ("codecarbon", {"tracking_mode": "machine"}),
    "codecarbon-process": ("codecarbon", {"tracking_mode": "process"}),
    "rapl": ("rapl", {}),
    "nvml": ("nvml", {}),
}


def describe(reading) -> str:
    joules = "unavailable" if reading.joules is None else f"{reading.joules:9.1f} J"
    watts = "n/a" if reading.average_watts is None else f"{reading.average_watts:6.1f} W"
    parts = ", ".join(f"{c.component}={c.method}" for c in reading.components)
    return f"{reading.seconds:7.2f} s  {joules}  avg {watts}  method {reading.method:13s} ({parts})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = load_source(load_registry()["smollm2-135m"])
    model = model.to(device)
    ids = tokenize_stream(tokenizer, corpus_text(WIKITEXT2_RAW_TEST))
    protocol = PerplexityProtocol(
        "wikitext-2-raw-v1/test", "\n\n", args.max_length, args.max_length, "float32",
        max_tokens=args.windows * args.max_length,
    )

    def workload() -> float:
        return evaluate_perplexity(model, ids, protocol).perplexity

    info = hardware_info()
    print(f"hardware: {info.get('cpu_model')}, {info.get('logical_cores')} logical cores, "
          f"GPUs: {info.get('gpus')}, device {device}, torch threads {torch.get_num_threads()}")
    workload()  # warm-up
    meters = {}
    for label, (name, options) in METERS.items():
        meter = make_meter(name, **options)
        meters[label] = meter
        print(f"probe {label:19s}: {meter.probe()}")
    print("\neach meter on its own run of the same workload:")
    for label, meter in meters.items():
        with meter.measure() as box:
            workload()
        print(f"  {label:19s} {describe(box.reading)}")
    print("\nall meters around one shared run:")
    for meter in meters.values():
        meter.start()
    started = time.perf_counter()
    workload()
    wall = time.perf_counter() - started
    readings = {label: meter.stop() for label, meter in reversed(list(meters.items()))}
    print(f"  wall {wall:.2f} s")
    for label in meters:
        print(f"  {label:19s} {describe(readings[label])}")
    print(f"\n{args.reps} repetitions after 1 warm-up, meter auto:")
    reps = run_repetitions(workload, meters["auto"], RepetitionProtocol(warmup=1, repetitions=args.reps))
    seconds = summarize([r.seconds for r in reps])
    print(f"  time   mean {seconds.mean:.3f} s, std {seconds.std:.3f}, 95% CI [{seconds.ci95_low:.3f}, "
          f"{seconds.ci95_high:.3f}], CV {100 * seconds.cv:.1f}%")
    joules = [r.energy.joules for r in reps]
    if all(j is not None for j in joules):
        energy = summarize(joules)
        print(f"  energy mean {energy.mean:.2f} J ({reps[0].energy.method}), std {energy.std:.2f}, "
              f"95% CI [{energy.ci95_low:.2f}, {energy.ci95_high:.2f}], CV {100 * energy.cv:.1f}%")
    for meter in meters.values():
        meter.close()


if __name__ == "__main__":
    main()
