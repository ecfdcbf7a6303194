"""`llmopt pools`: set the instance's `cpu` and `gpu` pool limits to the devices this machine has
(one CPU step at a time; one step per GPU). dagster.yaml can only give one default limit for every
pool; per-pool limits live in the instance (DAGSTER_HOME), so this sets them there.
"""

import argparse
import os
import sys

import dagster as dg
import torch

from llmopt_assets.measure.devices import pool_limits
from llmopt_assets.paths import DAGSTER_HOME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=None, help="GPUs to allow (default: the CUDA devices visible)")
    args = parser.parse_args(argv)
    os.environ.setdefault("DAGSTER_HOME", str(DAGSTER_HOME))
    gpus = torch.cuda.device_count() if args.gpus is None else args.gpus
    with dg.DagsterInstance.get() as instance:
        for pool, limit in pool_limits(gpus).items():
            instance.event_log_storage.set_concurrency_slots(pool, limit)
            print(f"pool {pool}: {limit} concurrent step(s)  ({instance.root_directory})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
