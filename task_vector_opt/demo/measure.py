"""One-off measurement of the offline demo (not a test): does the chat vector help?

    python -m task_vector_opt.demo.measure [CACHE_DIR] [--weights 0,0.5,1,1.5] [--search 200]

Builds (or reuses) base / tuned / target, then scores ``target + w * (tuned - base)``
on the demo_skill task: the first ``--search`` docs (what a search would score) and
the remaining docs (a holdout), and prints accuracies and timings as JSON lines.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TASK_DIR = REPO_ROOT / "lm-evaluation-harness" / "demo"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cache", nargs="?", default=".cache/demo")
    parser.add_argument("--weights", default="0,0.5,1,1.5")
    parser.add_argument("--search", type=int, default=200, help="docs scored as the search split")
    args = parser.parse_args()

    import logging

    import torch

    from task_vector_opt.demo.finetune import available_threads, prepare_demo_models

    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    torch.set_num_threads(available_threads())

    t0 = time.perf_counter()
    dirs = prepare_demo_models(Path(args.cache))
    print(json.dumps({"prepare_s": round(time.perf_counter() - t0, 1), **{k: str(v) for k, v in dirs.items()}}))
    for key in ("base", "tuned", "target"):
        marker = dirs[key] / "tvo_demo_model.json"
        if marker.exists():
            print(json.dumps({key: json.loads(marker.read_text())}))

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = load_file(dirs["base"] / "model.safetensors")
    tuned = load_file(dirs["tuned"] / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(dirs["target"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(dirs["target"])
    model.eval()
    target = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16)
    manager = TaskManager(include_path=str(TASK_DIR))

    def evaluate(**kw) -> tuple[float, float]:
        started = time.perf_counter()
        out = lm_eval.simple_evaluate(model=lm, tasks=["demo_skill"], task_manager=manager, **kw)
        return out["results"]["demo_skill"]["acc,none"], time.perf_counter() - started

    n_docs = sum(1 for line in (TASK_DIR / "demo_skill_test.jsonl").read_text().splitlines() if line.strip())
    holdout = list(range(args.search, n_docs))
    _, first_s = evaluate(limit=100)  # warm-up; the first call pays one-time costs
    for w in [float(x) for x in args.weights.split(",")]:
        with torch.no_grad():
            state = model.state_dict()
            for name, tensor in state.items():
                if name in base and name in tuned:
                    tensor.copy_(target[name] + w * (tuned[name] - base[name]))
        acc_100, s_100 = evaluate(limit=100)
        acc_search, s_search = evaluate(limit=args.search)
        acc_hold, _ = evaluate(samples={"demo_skill": holdout}) if holdout else (float("nan"), 0.0)
        print(json.dumps({"w": w, "acc_search": acc_search, "search_docs": args.search,
                          "acc_holdout": acc_hold, "holdout_docs": len(holdout),
                          "acc_first100": acc_100, "eval100_s": round(s_100, 2),
                          f"eval{args.search}_s": round(s_search, 2)}), flush=True)
    print(json.dumps({"first_eval100_s_incl_warmup": round(first_s, 2)}))


if __name__ == "__main__":
    main()
