"""A perplexity run: the evaluation repeated N times after warm-up, each repetition timed and
metered, one row per repetition with everything needed to trace and judge the number."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import torch
from transformers import PreTrainedModel

from llmopt_assets.measure.energy import EnergyMeter, power_flags
from llmopt_assets.measure.hardware import hardware_info
from llmopt_assets.measure.perplexity import PerplexityProtocol, PerplexityResult, evaluate_perplexity
from llmopt_assets.measure.repetitions import Repetition, RepetitionProtocol, run_repetitions


@dataclass(frozen=True)
class PowerRange:
    """What the measured hardware can draw, for plausibility flags; None = unknown."""

    max_watts: float | None = None
    idle_watts: float | None = None


def repetition_row(repetition: Repetition, context: dict, power: PowerRange = PowerRange()) -> dict:
    """One measured repetition as a flat table row (JSON strings for nested records)."""
    result: PerplexityResult = repetition.value
    energy = repetition.energy
    return {
        **context,
        "repetition": repetition.index,
        "perplexity": result.perplexity,
        "nll_sum": result.nll_sum,
        "scored_tokens": result.scored_tokens,
        "windows": result.windows,
        "seconds": repetition.seconds,
        "tokens_per_second": result.scored_tokens / repetition.seconds,
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
        **context,
        "protocol": json.dumps(protocol.to_dict()),
        "repetition_protocol": json.dumps(
            {"warmup": repetitions.warmup, "repetitions": repetitions.repetitions,
             "cooldown_seconds": repetitions.cooldown_seconds}
        ),
        "hardware": json.dumps(hardware_info(), default=str),
        "threads": torch.get_num_threads(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    done = run_repetitions(
        lambda: evaluate_perplexity(model, tokens, protocol), meter, repetitions, on_repetition=on_repetition
    )
    return [repetition_row(r, context, power) for r in done]
