"""Where one evaluator window's time goes (issue 15): the fp32 base and int8-dyn variants of
SmolLM2-135M under torch.profiler, one thread, one window through the evaluator's own
``batch_nll`` (backbone, chunked lm_head, log-sum-exp loss).

Each module of interest is wrapped in a named profiler range (forward pre/post hooks), so the
table splits the window into: the decoder's linear layers (for int8 layers: the int8 kernel and
what runs around it, the activation scaling), lm_head, SDPA, RMSNorm, the loss, and the rest
(embedding, rotary, SiLU·up, residual adds). Profiled times carry the profiler's own overhead
per op; the unprofiled wall time of the same window is printed beside them.

A second table turns the matmul-shaped parts into GFLOP/s and % of the ``torch.matmul`` peak
measured in the same run and dtype: the decoder linears and lm_head at 2·in·out per token, SDPA at
the causal attention's 2·2·head_dim per (query, visible key) pair per head. It shows where the
evaluator's distance from the peak is (issue 15's "% of peak" counts only 2·params·tokens).

    .venv/bin/python benchmarks/int8_profile.py [--tokens 1024] [--variants fp32,int8-dyn,...]
"""

import argparse
import copy
import time

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

import speed_common as common
from llmopt_assets.measure.corpus import WIKITEXT2_VALID, file_text, tokenize_stream
from llmopt_assets.measure.peak import matmul_peak
from llmopt_assets.measure.perplexity import HEAD_CHUNK_TOKENS, batch_nll
from llmopt_assets.profiles import PROFILES
from llmopt_assets.techniques import quantization
from llmopt_assets.techniques.recipe import QUANTIZE
from llmopt_assets.techniques.variants import quantize_step

INT8_KERNELS = ("quantized::linear_dynamic", "aten::_int_mm")


def label_of(name: str, module: nn.Module) -> str | None:
    kind = type(module).__name__
    if name == "lm_head":
        return "lm_head"
    if isinstance(module, (nn.Linear, *quantization.QUANTIZED_MODULE_TYPES)) or "Int8" in kind or "Scaled" in kind:
        return "decoder linears" if "layers." in name else None
    if "RMSNorm" in kind or "LayerNorm" in kind:
        return "norms"
    return None


def wrap(model: nn.Module) -> list:
    """Profiler ranges around the labelled modules; the outermost labelled module wins (an int8
    layer's inner torch module is not counted twice)."""
    handles = []
    for name, module in model.named_modules():
        label = label_of(name, module)
        if label is None or any(name.startswith(p + ".") for p, m in model.named_modules() if p and label_of(p, m)):
            continue
        state: dict = {}

        def enter(_module, _inputs, label=label, state=state):
            state["range"] = record_function(f"## {label}")
            state["range"].__enter__()

        def leave(_module, _inputs, _output, state=state):
            state["range"].__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    return handles


def one_window(model: nn.Module, ids: torch.Tensor) -> None:
    # batch_nll applies the head itself; wrap the loss part through the head's post hook timing:
    # the remainder of the window after backbone and head ranges is the loss (measured below).
    batch_nll(model.base_model, model.get_output_embeddings(), ids, [ids.shape[1] - 1])


def breakdown(model: nn.Module, ids: torch.Tensor) -> tuple[dict[str, float], float]:
    handles = wrap(model)
    with torch.inference_mode():
        one_window(model, ids)  # warm-up: packed weights, kernel choice
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            with record_function("## window"):
                with record_function("## backbone"):
                    hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
                with record_function("## head+loss"):
                    # the same computation as batch_nll's chunk loop, with the head separately labelled
                    head = model.get_output_embeddings()
                    targets = ids[0, 1:]
                    predicting = hidden[0, :-1]
                    total = torch.zeros((), dtype=torch.float64)
                    for start in range(0, len(targets), HEAD_CHUNK_TOKENS):
                        stop = start + HEAD_CHUNK_TOKENS
                        logits = head(predicting[start:stop]).float()
                        with record_function("## loss"):
                            target_logits = logits.gather(1, targets[start:stop, None]).squeeze(1)
                            total += (torch.logsumexp(logits, dim=1) - target_logits).sum(dtype=torch.float64)
    for handle in handles:
        handle.remove()
    times: dict[str, float] = {}
    ops: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith("## "):
            times[event.key[3:]] = event.cpu_time_total / 1e3
        else:
            ops[event.key] = event.cpu_time_total / 1e3
    table = {
        "window (profiled)": times["window"],
        "decoder linears": times.get("decoder linears", 0.0),
        "  of which int8 kernel": sum(ops.get(k, 0.0) for k in INT8_KERNELS),
        "lm_head": times.get("lm_head", 0.0),
        "SDPA": ops.get("aten::scaled_dot_product_attention", 0.0),
        "norms": times.get("norms", 0.0),
        "loss": times.get("loss", 0.0),
    }
    kernel = table["  of which int8 kernel"]
    table["  of which scaling/epilogue"] = table["decoder linears"] - kernel if kernel else 0.0
    accounted = sum(v for k, v in table.items() if not k.startswith(" ") and k != "window (profiled)")
    table["rest (embedding, rotary, SiLU, residuals)"] = table["window (profiled)"] - accounted
    with torch.inference_mode():
        walls = []
        for _ in range(3):
            started = time.perf_counter()
            one_window(model, ids)
            walls.append(time.perf_counter() - started)
    return table, common.median(walls) * 1e3


def gflop(model: nn.Module, tokens: int) -> dict[str, float]:
    """The FLOPs (in GFLOP) of one window's matmul-shaped parts, counted from the fp32 shapes."""
    config = model.config
    linears = sum(
        2 * m.in_features * m.out_features * tokens
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and "layers." in name
    )
    head = 2 * config.hidden_size * config.vocab_size * (tokens - 1)
    head_dim = config.hidden_size // config.num_attention_heads
    pairs = tokens * (tokens + 1) / 2  # causal: query t sees keys 0..t
    sdpa = config.num_hidden_layers * config.num_attention_heads * 2 * 2 * head_dim * pairs
    return {"decoder linears": linears / 1e9, "lm_head": head / 1e9, "SDPA": sdpa / 1e9}


def build(variant: str, base: nn.Module, stream: torch.Tensor) -> nn.Module:
    model = copy.deepcopy(base)
    if variant != "fp32":
        quantize_step(model, QUANTIZE[variant], stream, PROFILES["smoke"])
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--variants", default="fp32,int8-dyn")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    common.header(f"int8-dyn profile: one {args.tokens}-token evaluator window, {args.threads} thread(s)")
    base, tokenizer = common.load_model()
    stream = tokenize_stream(tokenizer, file_text(WIKITEXT2_VALID))
    ids = common.wikitext_ids(tokenizer, args.tokens).reshape(1, -1)
    results = {}
    work = gflop(base, args.tokens)
    peaks: dict[str, float] = {}
    for variant in args.variants.split(","):
        model = build(variant, base, stream)
        dtype = next(model.parameters()).dtype
        results[variant] = breakdown(model, ids)
        peaks[variant] = matmul_peak(dtype).gflops
        del model
    variants = list(results)
    print("| ms | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    print("| window, unprofiled (median of 3) | " + " | ".join(f"{results[v][1]:.0f}" for v in variants) + " |")
    for row in results[variants[0]][0]:
        print(f"| {row} | " + " | ".join(f"{results[v][0].get(row, 0.0):.0f}" for v in variants) + " |")
    print("\nGFLOP/s (% of the torch.matmul peak measured after each variant, its dtype); an int8")
    print("variant's linears are counted at the same FLOPs as fp32's, against the fp32/bf16 peak:\n")
    print("| part | GFLOP | " + " | ".join(variants) + " |")
    print("|---|---|" + "---|" * len(variants))
    print("| matmul peak | | " + " | ".join(f"{peaks[v]:.0f}" for v in variants) + " |")
    for part, amount in work.items():
        cells = []
        for v in variants:
            ms = results[v][0].get(part, 0.0)
            rate = amount / (ms / 1e3) if ms else float("nan")
            cells.append(f"{rate:.0f} ({100 * rate / peaks[v]:.0f}%)")
        print(f"| {part} | {amount:.0f} | " + " | ".join(cells) + " |")
    total = sum(work.values())
    print("| whole window, unprofiled (counted parts' FLOPs) | "
          f"{total:.0f} | " + " | ".join(
              f"{total / (results[v][1] / 1e3):.0f} ({100 * total / (results[v][1] / 1e3) / peaks[v]:.0f}%)"
              for v in variants) + " |")


if __name__ == "__main__":
    main()
