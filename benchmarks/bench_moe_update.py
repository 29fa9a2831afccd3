"""Time one MoE trial update in memory against the original path, and count the bytes each writes to disk.

    python benchmarks/bench_moe_update.py [--experts 4] [--size mistral-175m] [--dtype bfloat16] [--repeats 3]
                                          [--threads N]

On a small CPU machine shared with other work, pass --threads 1: two torch threads that spin-wait on each
other while other processes hold the cores made elementwise ops up to 17x slower here (both methods).

Builds Mistral-shaped base / tuned / target models from a config with random weights (no download), writes
them to a temp dir as safetensors (setup, not timed), builds the MoE in memory once, then times, interleaved:
  ours     : MoEMerger.apply with a new weight for every group, so every MoE tensor is rewritten (the worst
             case of a trial; the routers are refreshed too when the gate mode depends on the weights)
  original : the original scripts' path for the same trial, with the merged experts already in memory:
             save_pretrained of every expert, compose the Mixtral checkpoint on disk, reload it with
             from_pretrained; timed twice: as is (writes may stay in the page cache, as they do at this
             size) and with os.sync() before the reload (at 7B sizes a trial writes ~100 GB, so they cannot)
and prints medians, the ratio (target >= 20x), and the bytes each writes per trial: write() syscall bytes
(/proc/self/io wchar), bytes sent to the storage layer (write_bytes) and bytes of files left in the run dirs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from task_vector_opt.run_config import RunConfig  # noqa: E402
from task_vector_opt.sources import ModelSource  # noqa: E402
from task_vector_opt.merging.moe.routers import random_router_vectors  # noqa: E402
from task_vector_opt.merging.moe.workspace import prepare  # noqa: E402
from task_vector_opt.merging.moe.config import ExpertPrompts, MoESettings  # noqa: E402
from task_vector_opt.merging.moe.on_disk import checkpoint_bytes, compose_moe_on_disk  # noqa: E402

SIZES = {
    # About 175M parameters per expert (32k vocabulary, untied lm_head); a 4-expert MoE has about 440M.
    "mistral-175m": dict(vocab_size=32000, hidden_size=1024, intermediate_size=3584, num_hidden_layers=8,
                         num_attention_heads=16, num_key_value_heads=4),
    # About 60M parameters per expert, for a quick look.
    "mistral-60m": dict(vocab_size=32000, hidden_size=512, intermediate_size=1792, num_hidden_layers=6,
                        num_attention_heads=8, num_key_value_heads=2),
}


def io_counters() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":")
        fields[key] = int(value)
    return fields


def files_bytes(*dirs: Path) -> int:
    return sum(f.stat().st_size for d in dirs if d.exists() for f in d.rglob("*") if f.is_file())


def write_models(root: Path, n_experts: int, shape: dict, dtype: torch.dtype) -> dict:
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(**shape, sliding_window=None)
    torch.manual_seed(0)
    base = MistralForCausalLM(config).to(dtype)
    base.save_pretrained(root / "base")
    dirs = {"base": root / "base"}
    with torch.no_grad():
        for role in ["tuned"] + [f"target{i + 1}" for i in range(n_experts)]:
            model = MistralForCausalLM(config).to(dtype)
            model.load_state_dict(base.state_dict())
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.01)
            model.save_pretrained(root / role)
            dirs[role] = root / role
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                        unk_token="<unk>")
    for role in dirs:
        tokenizer.save_pretrained(dirs[role])
    return dirs


def run_config(dirs: dict, n_experts: int, dtype: str, device: str, work: Path, gate_mode: str) -> RunConfig:
    prompts = [ExpertPrompts([f"<unk> {i}"]) for i in range(n_experts)]
    settings = MoESettings(n_experts=n_experts, base_index=0, gate_mode=gate_mode, experts_per_token=2, gate_seed=0,
                           prompts=prompts, save_moe=False)
    return RunConfig(
        pipeline="bench", targets=[ModelSource(f"--target_model_{i + 1}", str(dirs[f"target{i + 1}"]))
                                   for i in range(n_experts)],
        base=ModelSource("--base_model", str(dirs["base"])), tuned=ModelSource("--tuned_model", str(dirs["tuned"])),
        cache_dir=None, dtype=dtype, device=device, vector_placement="auto", skip_embed=False,
        trust_remote_code=False, allow_pickle=False, optimize_mode="all", sampler="TPE", seed=0, n_trials=1,
        weight_min=0.0, weight_max=2.0, storage="", study_name="bench", run_dir=work / "run",
        baseline_trials=False, holdout_top_k=1, output_dir=work / "out", overwrite_output_dir=False,
        log_level="WARNING", dry_run=False, extra={"moe": settings})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--size", default="mistral-175m", choices=sorted(SIZES))
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--tmp", default=None, help="Where the models and the original path's files go "
                                                    "(default: the system temp dir)")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    work = Path(tempfile.mkdtemp(prefix="bench_moe_", dir=args.tmp))
    try:
        dirs = write_models(work / "models", args.experts, SIZES[args.size], dtype)
        ws = prepare(run_config(dirs, args.experts, args.dtype, args.device, work, "random"))
        hidden_ws = prepare(run_config(dirs, args.experts, args.dtype, args.device, work / "h", "hidden"))
        n_params = sum(p.numel() for p in ws.model.parameters())
        per_expert = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(dirs["target1"]).parameters())
        print(f"MoE of {args.experts} experts ({args.size}: {per_expert / 1e6:.0f}M parameters each) = "
              f"{n_params / 1e6:.0f}M parameters, {args.dtype} on {args.device}, {ws.n_tensors} tensors, "
              f"{len(ws.group_order)} weights, {torch.get_num_threads()} threads")

        # The original's inputs for the same trial: every expert already merged, as dense models in memory.
        experts = [AutoModelForCausalLM.from_pretrained(dirs[f"target{i + 1}"], dtype=dtype)
                   for i in range(args.experts)]
        tokenizer = AutoTokenizer.from_pretrained(dirs["target1"])
        routers = random_router_vectors(len(experts[0].model.layers), args.experts,
                                        experts[0].config.hidden_size, seed=0)
        step = iter(range(10**9))
        written: dict[str, list[dict[str, int]]] = {"ours": [], "ours (hidden routers)": [], "original": [],
                                                    "original (synced)": []}

        def ours_with(workspace, label):
            def update() -> None:
                before, files_before = io_counters(), files_bytes(work / "run", work / "out")
                workspace.merger.apply(dict.fromkeys(workspace.group_order, 0.5 + (next(step) % 7) / 10))
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                after = io_counters()
                written[label].append({"wchar": after["wchar"] - before["wchar"],
                                       "write_bytes": after["write_bytes"] - before["write_bytes"],
                                       "files": files_bytes(work / "run", work / "out") - files_before})
            return update

        def original(durable: bool = False) -> None:
            trial = Path(tempfile.mkdtemp(prefix="trial_", dir=work))
            before = io_counters()
            expert_dirs = []
            for index, model in enumerate(experts):
                model.save_pretrained(trial / f"expert{index + 1}")  # the merge itself is not timed
                tokenizer.save_pretrained(trial / f"expert{index + 1}")
                expert_dirs.append(trial / f"expert{index + 1}")
            composed = compose_moe_on_disk(expert_dirs, 0, routers, 2, trial / "moe", dtype)
            if durable:  # at 7B sizes (4 x 15 GB experts + a 48 GB MoE per trial) the page cache cannot hold it
                os.sync()
            moe = AutoModelForCausalLM.from_pretrained(composed, dtype=dtype, device_map=args.device)
            after = io_counters()
            written["original (synced)" if durable else "original"].append({"wchar": after["wchar"] - before["wchar"],
                                        "write_bytes": after["write_bytes"] - before["write_bytes"],
                                        "files": checkpoint_bytes(trial)})
            del moe
            shutil.rmtree(trial)

        methods = {"ours": ours_with(ws, "ours"), "ours (hidden routers)": ours_with(hidden_ws,
                                                                                    "ours (hidden routers)"),
                   "original": original, "original (synced)": lambda: original(durable=True)}
        for fn in methods.values():
            fn()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        median = {name: statistics.median(values) for name, values in times.items()}

        print(f"{'method':<58}{'median s':>10}{'wchar B':>16}{'write_bytes B':>16}{'files B':>16}")
        labels = {"ours": "ours: in-memory update, every tensor rewritten",
                  "ours (hidden routers)": "ours: same, hidden-state routers recomputed",
                  "original": "original: save_pretrained x N + compose on disk + reload",
                  "original (synced)": "original, its files synced to disk (os.sync) before reload"}
        for key, label in labels.items():
            last = written[key][-1]
            print(f"{label:<58}{median[key]:>10.4f}{last['wchar']:>16,}{last['write_bytes']:>16,}"
                  f"{last['files']:>16,}")
        print(f"ratio original / ours                    : {median['original'] / median['ours']:.1f}x  "
              "(target >= 20x)")
        print(f"ratio original synced / ours             : {median['original (synced)'] / median['ours']:.1f}x  "
              "(page cache alone cannot hold a 7B MoE trial's writes)")
        print(f"ratio original / ours (hidden routers)   : "
              f"{median['original'] / median['ours (hidden routers)']:.1f}x")
        worst = max(max(r["wchar"], r["write_bytes"], r["files"]) for k in ("ours", "ours (hidden routers)")
                    for r in written[k])
        print(f"bytes written per trial, ours (max over {args.repeats + 1} trials, any counter): {worst}  "
              "(target 0)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
