"""Distillation on SmolLM2-135M: teacher vs undistilled layer-dropped student vs distilled student
(perplexity), and the student's forward time per token against the teacher's, side by side.

Issue 4's targets: the distilled 15-of-30-layer student has clearly lower perplexity than the
undistilled one, and its time ratio to the teacher is < 0.6.

    .venv/bin/python benchmarks/distillation.py [--steps 60 [200 ...]] [--lr 3e-4] [--windows 4] [--reverse]
        [--data teacher-samples|wikitext2-valid|hf:<path>[:<config>]:<split>] [--data-tokens 16384]

Issue 10: the KD student on teacher-sampled text against the same run on WikiText-2 valid (the
evaluation domain), each next to its teacher.
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmopt_assets.measure.corpus import (  # noqa: E402
    WIKITEXT2_RAW_TEST,
    corpus_text,
    tokenize_stream,
)
from llmopt_assets.measure.perplexity import PerplexityProtocol, evaluate_perplexity  # noqa: E402
from llmopt_assets.models.architecture import decoder_layers  # noqa: E402
from llmopt_assets.models.registry import load_registry  # noqa: E402
from llmopt_assets.models.sources import load_source  # noqa: E402
from llmopt_assets.techniques import distillation, distillation_data  # noqa: E402


def seconds_per_token(model, ids: torch.Tensor, repeats: int = 3) -> float:
    window = ids[:512].unsqueeze(0)
    with torch.inference_mode():
        model(window, use_cache=False)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            model(window, use_cache=False)
    return (time.perf_counter() - started) / (repeats * window.shape[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--steps", type=int, nargs="+", default=[60],
        help="one or more step counts: each trains a fresh student on the same text (sampled once)",
    )
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--reverse", action="store_true")
    parser.add_argument(
        "--data", default="teacher-samples",
        help="teacher-samples (default), wikitext2-valid (the evaluation domain), hf:<path>[:<config>]:<split>",
    )
    parser.add_argument("--data-tokens", type=int, default=16384, help="corpus size (validation slice included)")
    args = parser.parse_args()
    teacher, tokenizer = load_source(load_registry()["smollm2-135m"])
    test_ids = tokenize_stream(tokenizer, corpus_text(WIKITEXT2_RAW_TEST))
    started = time.perf_counter()
    train_ids = distillation_data.distillation_stream(
        distillation_data.parse_source(args.data), teacher, tokenizer, args.data_tokens,
        distillation.DistillationConfig.SMOKE.block_length,
    )
    print(f"training text: {args.data}, {len(train_ids)} tokens in {time.perf_counter() - started:.0f} s", flush=True)
    protocol = PerplexityProtocol("wikitext-2-raw-v1/test", "\n\n", 512, 512, "float32", max_tokens=512 * args.windows)
    kept = distillation.default_kept_layers(len(decoder_layers(teacher)))
    teacher_ppl = evaluate_perplexity(teacher, test_ids, protocol).perplexity
    undistilled_ppl = evaluate_perplexity(distillation.init_student(teacher, kept), test_ids, protocol).perplexity
    teacher_spt = seconds_per_token(teacher, test_ids)
    print(f"\nteacher {len(decoder_layers(teacher))} layers, student {len(kept)} layers {kept}")
    print(f"perplexity ({protocol.max_tokens} tokens of WikiText-2 test, windows of 512): "
          f"teacher {teacher_ppl:.2f}, undistilled student {undistilled_ppl:.1f}", flush=True)
    for steps in args.steps:
        student = distillation.init_student(teacher, kept)
        config = dataclasses.replace(
            distillation.DistillationConfig.SMOKE, steps=steps, learning_rate=args.lr,
            warmup_steps=min(5, steps), log_every=10, reverse_kl=args.reverse,
        )
        train_blocks, validation_blocks = distillation_data.split_validation(
            distillation.pack_blocks(train_ids, config.block_length), config.validation_fraction
        )
        epochs = config.steps * config.batch_size * config.block_length / train_blocks.numel()
        result = distillation.distill(
            teacher, student, train_blocks, config, validation_blocks=validation_blocks,
            log=lambda p: print(f"  step {p.step}/{p.steps} loss {p.loss:.3f} (kl {p.kl:.3f}, ce {p.ce:.3f}) "
                                f"{p.tokens_per_second:.0f} tok/s", flush=True),
        )
        distilled_ppl = evaluate_perplexity(student.eval(), test_ids, protocol).perplexity
        student_spt = seconds_per_token(student, test_ids)
        print(f"\ndistillation: {config.steps} steps x {config.batch_size} x {config.block_length} tokens, "
              f"lr {config.learning_rate}, {'reverse' if args.reverse else 'forward'} KL, T={config.temperature}, "
              f"alpha={config.alpha}: {result.seconds:.0f} s, {result.tokens_per_second:.0f} tok/s, "
              f"final loss {result.final_loss:.3f}")
        print(f"training text {args.data}: {train_blocks.numel()} tokens ({epochs:.1f} epochs planned), "
              f"{validation_blocks.numel()} held out; best step {result.best_step}, stopped early: {result.stopped_early}")
        print(f"perplexity: teacher {teacher_ppl:.2f}, undistilled student {undistilled_ppl:.1f}, "
              f"distilled student ({steps} steps) {distilled_ppl:.2f}")
        print(f"forward s/token: teacher {teacher_spt * 1e3:.3f} ms, student {student_spt * 1e3:.3f} ms, "
              f"ratio {student_spt / teacher_spt:.3f}  (target < 0.6)", flush=True)

if __name__ == "__main__":
    main()
