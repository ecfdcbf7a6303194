"""Resources: compute device, model store, energy meter, evaluation profile, registry, tables."""

import logging
from pathlib import Path

import dagster as dg
import polars as pl
import psutil
import torch

from llmopt_assets.measure.devices import DeviceChoice, check_memory_budget, choose_device, pool_for
from llmopt_assets.measure.energy import EnergyMeter, make_meter
from llmopt_assets.measure.runs import PowerRange
from llmopt_assets.models.keys import inside, partition_file_stem
from llmopt_assets.models.registry import ModelSpec, load_registry, resolve
from llmopt_assets.paths import DEFAULT_REGISTRY, STORE_DIR, TABLES_DIR
from llmopt_assets.models.store import ModelStore
from llmopt_assets.profiles import PAPER_BENCHMARKS, EvaluationProfile, get_profile



class ComputeResource(dg.ConfigurableResource):
    """Where and how a step runs its model. The CPU executor: device='cpu'; the GPU executor:
    device='cuda' (or 'cuda:<i>'), usually with dtype='bfloat16'. 'auto' = CUDA when present.
    A CUDA device on a machine without one falls back to the CPU with one warning line. threads: CPU
    threads (0 = torch's default). memory_budget_gb: what the step may use on its device (None =
    what the device has free when the step starts); a model estimated not to fit is refused before
    its weights are read."""

    device: str = "auto"
    dtype: str = "float32"
    threads: int = 0
    memory_budget_gb: float | None = None

    def choice(self) -> DeviceChoice:
        return choose_device(self.device, torch.cuda.device_count())

    def resolved_device(self) -> str:
        return self.choice().device

    def torch_dtype(self) -> torch.dtype:
        from llmopt_assets.measure.perplexity import DTYPES

        if self.dtype not in DTYPES:
            raise ValueError(f"compute dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        return DTYPES[self.dtype]

    def apply_threads(self) -> int:
        if self.threads > 0:
            torch.set_num_threads(self.threads)
        return torch.get_num_threads()

    def budget_bytes(self, device: str) -> int:
        if self.memory_budget_gb is not None:
            return int(self.memory_budget_gb * 2**30)
        if device.startswith("cuda"):
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        return int(psutil.virtual_memory().available)

    def prepare(self, log: logging.Logger | dg.DagsterLogManager, parameter_count: int, where: str) -> str:
        """Threads set, device chosen (the fallback said once, here), memory checked: the device
        to load on. Raises MemoryBudgetError before anything is loaded."""
        self.apply_threads()
        choice = self.choice()
        if choice.fallback:
            log.warning(f"{where}: {choice.fallback}")
        check_memory_budget(parameter_count, self.dtype, self.budget_bytes(choice.device), where)
        return choice.device


# dagster-celery routes a step to the worker queue named by this op tag: start one worker per
# queue on the machines that have that hardware (deploy/README.md).
CELERY_QUEUE_TAG = "dagster-celery/queue"


def device_step(kind: str) -> dict:
    """`pool` and `op_tags` for an asset whose step wants `kind` ('cpu' or 'gpu') hardware."""
    return {"pool": pool_for(kind, torch.cuda.device_count()), "op_tags": {CELERY_QUEUE_TAG: kind}}


class ModelStoreResource(dg.ConfigurableResource):
    """Safetensors artifacts with manifests, written atomically under `root`."""

    root: str = str(STORE_DIR)

    def store(self) -> ModelStore:
        return ModelStore(Path(self.root))


class EnergyMeterResource(dg.ConfigurableResource):
    """Which energy meter measures each repetition: auto, nvml, rapl, carbontracker, codecarbon,
    cpu-time. PUE 1.0 by default (carbontracker's own 1.58 is removed and kept in the raw data)."""

    meter: str = "auto"
    pue: float = 1.0
    # What the metered hardware can draw (e.g. CPU TDP + DRAM, or the GPU's power limit) and
    # draws idle: average powers outside [idle / 1.5, max × 1.5] are flagged. None = unknown.
    max_watts: float | None = None
    idle_watts: float | None = None

    def power_range(self) -> PowerRange:
        return PowerRange(self.max_watts, self.idle_watts)

    def make(self) -> EnergyMeter:
        # Only the meters that model a data centre take a PUE; the others measure the machine.
        options = {"pue": self.pue} if self.meter in ("carbontracker", "codecarbon") else {}
        return make_meter(self.meter, **options)


class EvaluationProfileResource(dg.ConfigurableResource):
    """smoke (minutes on 2 cores) or paper (whole test split, 30 interleaved pairs); any field
    set here overrides the profile's: `pairs`, `min_repetition_seconds` and `max_warmup_rounds`
    shape the paired time/energy comparison, `repetitions` the perplexity run's own timing."""

    profile: str = "smoke"
    repetitions: int | None = None
    max_length: int | None = None  # perplexity window (capped by the model's context)
    max_tokens: int | None = None
    sparsegpt_samples: int | None = None
    sparsegpt_length: int | None = None
    cooldown_seconds: float | None = None
    pairs: int | None = None
    min_repetition_seconds: float | None = None
    max_warmup_rounds: int | None = None
    benchmarks: list[str] | None = None  # a subset of the paper's five
    benchmark_limit: int | None = None  # the same item limit for every benchmark
    benchmark_source: str | None = None  # local (data/) or hub
    benchmark_lm_eval_model: str | None = None  # hflm-prefix-cache (shared contexts once) or hflm
    head_criterion: str | None = None  # single-key-share (the paper read literally) or per-query-max
    # the students' training text: teacher-samples, hf:<path>[:<config>]:<split>, wikitext2-valid
    distillation_data: str | None = None
    distillation_tokens: int | None = None

    def get(self) -> EvaluationProfile:
        overrides: dict = {
            name: getattr(self, name)
            for name in ("repetitions", "max_length", "max_tokens", "sparsegpt_samples", "sparsegpt_length",
                         "cooldown_seconds", "pairs", "min_repetition_seconds", "max_warmup_rounds",
                         "benchmark_source", "benchmark_lm_eval_model", "head_criterion", "distillation_data", "distillation_tokens")
            if getattr(self, name) is not None
        }
        if self.benchmarks is not None:
            overrides["benchmarks"] = tuple(self.benchmarks)
        if self.benchmark_limit is not None:
            overrides["benchmark_limits"] = {name: self.benchmark_limit for name in PAPER_BENCHMARKS}
        return get_profile(self.profile, **overrides)


class ModelRegistryResource(dg.ConfigurableResource):
    path: str = str(DEFAULT_REGISTRY)

    def spec(self, slug: str) -> ModelSpec:
        return resolve(slug, load_registry(Path(self.path)))

    def specs(self) -> dict[str, ModelSpec]:
        return load_registry(Path(self.path))

    def slugs(self) -> list[str]:
        return sorted(load_registry(Path(self.path)))


# Input metadata: an empty table, not an error, when no partition of the upstream exists.
OPTIONAL_INPUT = "optional_input"


class PolarsParquetIOManager(dg.ConfigurableIOManager):
    """Tables as Parquet, one file per partition; a downstream table over many partitions reads
    those that exist and concatenates them."""

    root: str = str(TABLES_DIR)

    def _path(self, asset_key: dg.AssetKey, partition: str | None) -> Path:
        base = Path(self.root).joinpath(*asset_key.path)
        if partition is None:
            return base.with_suffix(".parquet")
        # A partition key becomes a file name only if it is a key ('../../x' is refused).
        return inside(Path(self.root), base / f"{partition_file_stem(partition)}.parquet")

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame) -> None:
        partition = context.partition_key if context.has_partition_key else None
        path = self._path(context.asset_key, partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".parquet.tmp")
        obj.write_parquet(staging)
        staging.replace(path)  # atomic: a reader never sees half a table
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path)), "rows": obj.height})

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        key = context.upstream_output.asset_key
        if not context.has_asset_partitions:
            return pl.read_parquet(self._path(key, None))
        paths = [self._path(key, p) for p in context.asset_partition_keys]
        present = [p for p in paths if p.is_file()]
        if not present:
            if (context.definition_metadata or {}).get(OPTIONAL_INPUT):
                return pl.DataFrame()  # an optional table nobody has materialized yet
            raise FileNotFoundError(f"no materialized partition of {key.to_user_string()} under {self.root}")
        return pl.concat([pl.read_parquet(p) for p in present], how="diagonal_relaxed")


def project_resources(
    root: Path,
    profile: EvaluationProfileResource,
    compute: ComputeResource | None = None,
    energy_meter: str = "cpu-time",
) -> dict[str, dg.ConfigurableResource | dg.ConfigurableIOManager]:
    """Every resource of a project kept under one folder: the registry at root/models.yaml, the
    model store at root/store and the tables at root/tables (tests, benchmarks, scratch projects)."""
    return {
        "registry": ModelRegistryResource(path=str(root / "models.yaml")),
        "model_store": ModelStoreResource(root=str(root / "store")),
        "io_manager": PolarsParquetIOManager(root=str(root / "tables")),
        "profile": profile,
        "energy_meter": EnergyMeterResource(meter=energy_meter),
        "compute": compute if compute is not None else ComputeResource(threads=1),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(
        resources={
            "compute": ComputeResource(),
            "model_store": ModelStoreResource(),
            "energy_meter": EnergyMeterResource(),
            "profile": EvaluationProfileResource(),
            "registry": ModelRegistryResource(),
            "io_manager": PolarsParquetIOManager(),
        }
    )
