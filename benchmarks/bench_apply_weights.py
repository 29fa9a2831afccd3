"""Time one weight application against a plain copy and against the original tool's approach, side by side.

    python benchmarks/bench_apply_weights.py [--arch qwen2-0.5b] [--dtype bfloat16] [--device cpu] [--repeats 5]

Builds a mid-size model from its config with random weights (no download), then times, on the same live model:
  ours      : Merger.apply with a new weight for every tensor (torch.add(origin, delta, alpha=w, out=param))
  copy      : param.copy_(origin) for every tensor: a plain copy of the same parameter bytes
  copy2     : the copy above plus a copy of the task vector: a copy that reads the same bytes as ours
  original  : model.load_state_dict(deep copy of the target), then v + w*tv per tensor, then param.copy_(...)
and prints medians (methods interleaved) and the ratios.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from task_vector_opt.merging.grouping import group_names, ordered_groups  # noqa: E402
from task_vector_opt.merging.merger import Merger  # noqa: E402
from task_vector_opt.merging.task_vector import VectorEntry  # noqa: E402

ARCHS = {
    # Qwen2-0.5B's shapes (494M parameters, tied embeddings).
    "qwen2-0.5b": ("Qwen2Config", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)),
    # A Mistral-shaped model with 8 layers (about 1.3B parameters with its 32k vocabulary).
    "mistral-8l": ("MistralConfig", dict(num_hidden_layers=8)),
    "llama-160m": ("LlamaConfig", dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                       num_attention_heads=12, num_key_value_heads=12)),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_interleaved(methods: dict, device, repeats: int) -> dict[str, float]:
    """Median time of each method, run in turn (A B C A B C ...) so drift on a shared machine hits all alike."""
    for fn in methods.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="qwen2-0.5b", choices=sorted(ARCHS))
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import transformers

    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    config_name, kwargs = ARCHS[args.arch]
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(0)
    with device:
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype).eval().requires_grad_(False)
    params = dict(model.named_parameters())
    vector = {name: VectorEntry(torch.randn_like(p) * 0.01) for name, p in params.items()}
    groups = group_names(list(vector), "all")
    names = ordered_groups(groups)
    merger = Merger(model, vector, groups, device)
    n_bytes = sum(p.nbytes for p in params.values())
    print(f"model {args.arch}: {sum(p.numel() for p in params.values()) / 1e6:.0f}M parameters, "
          f"{n_bytes / 2**30:.2f} GiB in {args.dtype} on {device}, {len(params)} tensors, "
          f"{torch.get_num_threads()} threads")

    step = iter(range(10**9))

    def ours() -> None:  # a new weight for every tensor, so every tensor is rewritten
        merger.apply(dict.fromkeys(names, 0.5 + (next(step) % 7) / 10))

    def plain_copy() -> None:
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(merger.origin[name])

    target_copy = copy.deepcopy(model.state_dict())  # what the original kept beside the live model

    def original() -> None:
        model.load_state_dict(target_copy)
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(param + 0.7 * vector[name].delta)

    scratch = {name: torch.empty_like(p) for name, p in params.items()}

    def copy_same_traffic() -> None:  # reads what ours reads (target copy + vector), writes param-sized buffers
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(merger.origin[name])
                scratch[name].copy_(vector[name].delta)

    t = timed_interleaved({"ours": ours, "copy": plain_copy, "copy2": copy_same_traffic, "original": original},
                          device, args.repeats)
    print(f"{'method':<40}{'median s':>10}{'GB/s of param bytes':>22}")
    labels = {"ours": "ours (fused add from the stored target)", "copy": "plain copy of the param bytes",
              "copy2": "copy of the bytes ours reads", "original": "original (load_state_dict + v + w*tv)"}
    for key, label in labels.items():
        print(f"{label:<40}{t[key]:>10.4f}{n_bytes / t[key] / 1e9:>22.2f}")
    print(f"ratio ours / plain copy of param bytes : {t['ours'] / t['copy']:.2f}x  (target <= 1.2x, limit 1.5x)")
    print(f"ratio ours / copy of the bytes it reads: {t['ours'] / t['copy2']:.2f}x")
    print(f"ratio original / ours                  : {t['original'] / t['ours']:.2f}x  (target >= 5x)")


if __name__ == "__main__":
    main()
