"""Measurement runs as table rows with everything needed to trace and judge each number:
a perplexity run (the evaluation, timed and metered as information), and a paired comparison
of a base and a variant (the source of Tc and Ec), one row per pair and arm."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import torch
from transformers import PreTrainedModel

from llmopt_assets.measure.comparison import CODE_VERSION as PAIRED_CODE_VERSION
from llmopt_assets.measure.comparison import ArmRepetition, ComparisonProtocol, ComparisonResult, Work, run_comparison
from llmopt_assets.measure.energy import EnergyMeter, EnergyReading, power_flags
from llmopt_assets.measure.hardware import hardware_info
from llmopt_assets.measure.interference import Interference
from llmopt_assets.measure.perplexity import CODE_VERSION as PERPLEXITY_CODE_VERSION
from llmopt_assets.measure.perplexity import (
    PerplexityProtocol,
    PerplexityResult,
    evaluate_perplexity,
    window_nll,
)
from llmopt_assets.measure.repetitions import Repetition, RepetitionProtocol, run_repetitions

# Bump with any change to how a run repeats, times and meters the evaluation, or to its rows.
# A measurement's code version also names the evaluator's.
CODE_VERSION = "1"
MEASUREMENT_CODE_VERSION = f"run{CODE_VERSION}.perplexity{PERPLEXITY_CODE_VERSION}"
COMPARISON_CODE_VERSION = f"{MEASUREMENT_CODE_VERSION}.paired{PAIRED_CODE_VERSION}"


@dataclass(frozen=True)
class PowerRange:
    """What the measured hardware can draw, for plausibility flags; None = unknown."""

    max_watts: float | None = None
    idle_watts: float | None = None


def energy_columns(energy: EnergyReading, power: PowerRange) -> dict:
    """One energy reading as flat columns: joules, meter, method, PUE, flags, the full record."""
    return {
        # None stays None: an energy we could not measure is missing, never zero.
        "joules": energy.joules,
        "average_watts": energy.average_watts,
        "energy_meter": energy.meter,
        "energy_method": energy.method,
        "energy_is_estimate": energy.is_estimate,
        "energy_pue": energy.pue,
        "energy": json.dumps(energy.to_dict(), default=str),
        "energy_flags": "; ".join(power_flags(energy, max_watts=power.max_watts, idle_watts=power.idle_watts)),
    }


def interference_columns(interference: Interference | None) -> dict:
    """Other processes' load during a repetition, as row columns (None: not monitored)."""
    if interference is None:
        return {"other_process_cores": None, "load_average_1m": None, "interference_flags": ""}
    return {
        "other_process_cores": interference.other_cores,
        "load_average_1m": interference.load_average_1m,
        "interference_flags": interference.flag,
    }


def repetition_row(repetition: Repetition, context: dict, power: PowerRange = PowerRange()) -> dict:
    """One measured repetition as a flat table row (JSON strings for nested records)."""
    result: PerplexityResult = repetition.value
    return {
        **context,
        "repetition": repetition.index,
        "perplexity": result.perplexity,
        "nll_sum": result.nll_sum,
        "scored_tokens": result.scored_tokens,
        "windows": result.windows,
        "seconds": repetition.seconds,
        "tokens_per_second": result.scored_tokens / repetition.seconds,
        **energy_columns(repetition.energy, power),
        **interference_columns(repetition.interference),
    }


def run_context(context: dict, protocol: PerplexityProtocol) -> dict:
    """The context every row of a run shares: protocol, hardware, threads, time of measurement."""
    return {
        **context,
        "protocol": json.dumps(protocol.to_dict()),
        "hardware": json.dumps(hardware_info(), default=str),
        "threads": torch.get_num_threads(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def measure_perplexity(
    model: PreTrainedModel,
    tokens: torch.Tensor,
    protocol: PerplexityProtocol,
    meter: EnergyMeter,
    repetitions: RepetitionProtocol,
    context: dict,
    on_repetition: Callable[[Repetition], None] | None = None,
    power: PowerRange = PowerRange(),
) -> list[dict]:
    """Rows for each measured repetition. `context` names the model, technique, fingerprints,
    recipe and profile; the protocol, hardware and meter are added here."""
    context = {
        **run_context(context, protocol),
        "measurement": "perplexity",
        "repetition_protocol": json.dumps(
            {"warmup": repetitions.warmup, "repetitions": repetitions.repetitions,
             "cooldown_seconds": repetitions.cooldown_seconds}
        ),
    }
    done = run_repetitions(
        lambda: evaluate_perplexity(model, tokens, protocol), meter, repetitions, on_repetition=on_repetition
    )
    return [repetition_row(r, context, power) for r in done]


def window_batches(tokens: torch.Tensor, window_length: int, device: str) -> list[torch.Tensor]:
    """The corpus cut into full windows ([1, window_length] each), made once and shared by both
    arms: the same tokens, and no second copy of them."""
    full = len(tokens) // window_length
    if full < 1:
        raise ValueError(f"the corpus has {len(tokens)} tokens, fewer than one window of {window_length}")
    stream = tokens[: full * window_length].to(device)
    return [stream[i * window_length : (i + 1) * window_length].unsqueeze(0) for i in range(full)]


def window_work(model: PreTrainedModel, batches: list[torch.Tensor]) -> Work:
    """One unit of work = the perplexity evaluator's forward pass and loss over one window;
    units beyond the corpus wrap around to its first window."""
    model.eval()

    def work(units: int) -> float:
        total = 0.0
        for unit in range(units):
            batch = batches[unit % len(batches)]
            total += float(window_nll(model, batch, batch.shape[1] - 1))  # float(): waits for the device
        return total

    return work


def comparison_rows(result: ComparisonResult, context: dict, tokens_per_unit: int, power: PowerRange) -> list[dict]:
    """One row per (pair, arm), each carrying the experiment's calibration and protocol."""
    calibration = result.calibration
    shared = {
        **context,
        "measurement": "comparison",
        "units_per_repetition": calibration.units,
        "tokens_per_repetition": calibration.units * tokens_per_unit,
        "calibration": json.dumps(calibration.to_dict()),
        "warmup_stable": calibration.stable,
        "reached_min_repetition_seconds": calibration.reached_minimum,
        "comparison_protocol": json.dumps(result.protocol.to_dict()),
    }
    return [
        {**shared, "pair": r.pair, "arm": r.arm, "position": r.position, "seconds": r.seconds,
         **energy_columns(r.energy, power), **interference_columns(r.interference)}
        for r in result.repetitions
    ]


def measure_comparison(
    base: PreTrainedModel,
    variant: PreTrainedModel,
    tokens: torch.Tensor,
    protocol: PerplexityProtocol,
    meter: EnergyMeter,
    comparison: ComparisonProtocol,
    context: dict,
    on_repetition: Callable[[ArmRepetition], None] | None = None,
    power: PowerRange = PowerRange(),
) -> tuple[list[dict], ComparisonResult]:
    """Base and variant timed and metered side by side on the same windows of the corpus
    (`measure.comparison`). `context` names the model, technique and both arms' fingerprints."""
    device = str(next(variant.parameters()).device)
    batches = window_batches(tokens, protocol.max_length, device)
    result = run_comparison(
        window_work(base, batches), window_work(variant, batches), meter, comparison, on_repetition=on_repetition
    )
    rows = comparison_rows(result, run_context(context, protocol), protocol.max_length, power)
    return rows, result
