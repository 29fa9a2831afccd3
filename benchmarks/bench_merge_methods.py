"""Per-trial time of each merge method with 2 and 3 task vectors, beside a plain copy and mergekit's round trip.

    python benchmarks/bench_merge_methods.py [--arch qwen2-0.5b] [--layers 4] [--vocab 32000] [--dtype bfloat16]
                                             [--device cpu] [--repeats 3] [--mergekit_repeats 1]

Builds the model from its config with random weights and random task vectors (no download), then times on the
same live model, for 2 and then 3 vectors, every tensor rewritten with new weights and densities each time:
  task_arithmetic, ties, dare_ties : Merger.apply (ties: thresholds precomputed once, outside the timing)
  copy                             : param.copy_(origin) for every tensor, a plain copy of the parameter bytes
  mergekit round trip              : mergekit-yaml of the same merge (ties config) to disk, then loading it back
                                     into the live model: what mergekit-evolve does per candidate on disk
Targets: ties <= 4x task_arithmetic; every method >= 10x faster than the mergekit round trip.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_apply_weights import ARCHS, sync, timed_interleaved  # noqa: E402
from task_vector_opt.merging.grouping import group_names  # noqa: E402
from task_vector_opt.merging.merger import Merger  # noqa: E402
from task_vector_opt.merging.methods import MergeSettings  # noqa: E402
from task_vector_opt.merging.task_vector import VectorEntry  # noqa: E402
from task_vector_opt.outputs.mergekit_export import layout_from_merger, mergekit_config  # noqa: E402

METHODS = ("task_arithmetic", "ties", "dare_ties")
MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"


def build_model(args):
    import transformers

    config_name, kwargs = ARCHS[args.arch]
    kwargs = dict(kwargs)
    if args.layers:
        kwargs["num_hidden_layers"] = args.layers
    if args.vocab:
        kwargs["vocab_size"] = args.vocab
    torch.manual_seed(0)
    with torch.device(args.device):
        model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, config_name)(**kwargs),
                                                              dtype=getattr(torch, args.dtype))
    return model.eval().requires_grad_(False)


def save_sources(model, vectors, root: Path) -> list[Path]:
    """base (= the live model) and base + vector_i as safetensors model directories, for mergekit."""
    dirs = [root / "base"]
    model.save_pretrained(dirs[0])
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    for i, vector in enumerate(vectors, 1):
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(original[name] + vector[name].delta)
        dirs.append(root / f"tuned{i}")
        model.save_pretrained(dirs[-1])
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(original[name])
    return dirs


def mergekit_round_trip(model, merger, params, dirs: list[Path], method: str, work: Path) -> float:
    """Seconds to write the merge with mergekit-yaml and load it back into the live model."""
    from safetensors.torch import load_file

    inputs = {"targets": [str(dirs[0])], "base_model": str(dirs[0]), "tuned_model": [str(d) for d in dirs[1:]],
              "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
              "merge": merger.settings.recipe_inputs()}
    config_path = work / "mergekit_config.yml"
    config_path.write_text(mergekit_config(inputs, params, layout_from_merger(model, merger)))
    assert yaml.safe_load(config_path.read_text())["merge_method"] == method
    out = work / "merged"
    shutil.rmtree(out, ignore_errors=True)
    sync(next(model.parameters()).device)
    start = time.perf_counter()
    gpu = ["--cuda"] if next(model.parameters()).is_cuda else []
    done = subprocess.run([str(MERGEKIT_YAML), str(config_path), str(out), "--no-copy-tokenizer", *gpu],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    state = {}
    for file in sorted(out.glob("*.safetensors")):
        state.update(load_file(file, device=str(next(model.parameters()).device)))
    model.load_state_dict(state, strict=False)
    sync(next(model.parameters()).device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="qwen2-0.5b", choices=sorted(ARCHS))
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (0: the architecture's own)")
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary size (0: the architecture's own)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mergekit_repeats", type=int, default=1)
    args = parser.parse_args()

    device = torch.device(args.device)
    model = build_model(args)
    params = dict(model.named_parameters())
    n_bytes = sum(p.nbytes for p in params.values())
    print(f"model {args.arch} ({args.layers or 'all'} layers, vocab {args.vocab or 'own'}): "
          f"{sum(p.numel() for p in params.values()) / 1e6:.0f}M parameters, {n_bytes / 2**30:.2f} GiB in "
          f"{args.dtype} on {device}, {len(params)} tensors, {torch.get_num_threads()} threads")
    generator = torch.Generator(device=device).manual_seed(1)
    all_vectors = [{name: VectorEntry(torch.randn(p.shape, generator=generator, device=device, dtype=p.dtype) * 0.01)
                    for name, p in params.items()} for _ in range(3)]
    groups = group_names(list(params), "layer")
    rows = []
    for n_vectors in (2, 3):
        vectors = all_vectors[:n_vectors]
        mergers = {}
        for method in METHODS:
            started = time.perf_counter()
            mergers[method] = Merger(model, vectors, groups, device, MergeSettings(method, dare_seed=None))
            print(f"{n_vectors} vectors, {method}: prepared in {time.perf_counter() - started:.1f}s "
                  f"(stored {mergers[method].stored_bytes() / 2**30:.2f} GiB)")
        step = iter(range(10**9))

        def trial(method: str):
            merger = mergers[method]

            def run() -> None:  # new weights and densities every time: every tensor is rewritten
                k = next(step)
                values = {name: 0.3 + ((k + i) % 7) / 10 for i, name in enumerate(merger.weight_names())}
                values.update({name: 0.2 + ((k + i) % 5) / 10 for i, name in enumerate(merger.density_names())})
                merger.apply(values)
            return run

        def plain_copy() -> None:
            with torch.no_grad():
                for name, param in params.items():
                    param.copy_(mergers["task_arithmetic"].origin[name])

        timings = timed_interleaved({**{m: trial(m) for m in METHODS}, "copy": plain_copy}, device, args.repeats)
        with tempfile.TemporaryDirectory() as tmp:
            dirs = save_sources(model, vectors, Path(tmp))
            merger = mergers["ties"]
            values = {name: 0.5 for name in merger.weight_names()} | {n: 0.5 for n in merger.density_names()}
            round_trips = [mergekit_round_trip(model, merger, values, dirs, "ties", Path(tmp))
                           for _ in range(args.mergekit_repeats)]
        timings["mergekit"] = min(round_trips)
        rows.append((n_vectors, timings))

    print(f"\n{'vectors':<9}{'task_arithmetic':>17}{'ties':>10}{'dare_ties':>11}{'copy':>10}{'mergekit rt':>13}"
          f"{'ties/ta':>9}{'mergekit/slowest':>18}")
    for n_vectors, t in rows:
        slowest = max(t[m] for m in METHODS)
        print(f"{n_vectors:<9}{t['task_arithmetic']:>16.3f}s{t['ties']:>9.3f}s{t['dare_ties']:>10.3f}s"
              f"{t['copy']:>9.3f}s{t['mergekit']:>12.2f}s{t['ties'] / t['task_arithmetic']:>8.2f}x"
              f"{t['mergekit'] / slowest:>17.1f}x")
    print("targets: ties/ta <= 4x; mergekit round trip / slowest method >= 10x")


if __name__ == "__main__":
    main()
