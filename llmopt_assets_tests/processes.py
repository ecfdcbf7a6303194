"""Servers a test starts (redis-server, Celery workers, the Dagster webserver): each in its own
process group, stopped by its PID in a bounded time, whatever the test did."""

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from llmopt_assets.measure.corpus import WIKITEXT2_VALID
from llmopt_assets_tests.tiny_models import fit_briefly, tiny_model, tiny_tokenizer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(command: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """A server in a new session (its children share its process group), output to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)


def stop(process: subprocess.Popen, grace_seconds: float = 15.0) -> None:
    """SIGTERM to the process group led by `process.pid`, SIGKILL after the grace period."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_until(ready: Callable[[], bool], seconds: float, what: str, processes: list[subprocess.Popen] = ()) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{what}: {process.args[0]} exited with {process.returncode} while starting")
        if ready():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {seconds:.0f} s")


def write_tiny_llama(root: Path, slug: str = "tiny-llama") -> Path:
    """A tiny Llama trained a little (it beats a uniform guess), saved with its tokenizer, and a
    registry naming it: the registry's path."""
    weights = root / f"{slug}-weights"
    tokenizer = tiny_tokenizer()
    text = WIKITEXT2_VALID.read_text(encoding="utf-8")[20000:60000]
    model = fit_briefly(tiny_model("llama"), torch.tensor(tokenizer(text)["input_ids"]))
    model.save_pretrained(weights)
    tokenizer.save_pretrained(weights)
    registry = root / "models.yaml"
    registry.write_text(f"models:\n  {slug}:\n    source: local\n    path: {weights}\n")
    return registry
