"""The offline demo: prepare SmolLM2 base / tuned / target, then run the JGLUE-style optimizer on both skills.

    python -m task_vector_opt.demo [extra flags for merge_task_vector_jglue.py]

The demo is the search benchmark's testbed (benchmarks/bench_search.py): the target's own skill (demo_target,
Japanese-prompt addition) and the tuned model's skill (demo_skill, word codes) are scored together, and plain
addition (w=1) costs the target part of its own skill. The search runs with the tool's default strategy
(sampler, optimize mode, trial count), so the demo shows what a user gets without choosing; the summary gives
both skills on held-out items for w=0, w=1 and the best merge.

Models are cached in $TVO_CACHE (default .cache/demo); outputs go to demo_output/: the merged model with its
report (demo_output/model/report.html, optimization_history.png, best_weights.png) and model card (README.md).
The pictures in the README and docs/en/benchmarks.md ("Demo") are that run's PNGs, copied to docs/.
Rerunning resumes the same study; delete demo_output/ for a fresh search.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from task_vector_opt.demo.finetune import prepare_demo_models
from task_vector_opt.cli.pipelines import JGLUE, script_main

ROOT = Path(__file__).resolve().parents[2]


def demo_argv(models: dict[str, Path], out: Path) -> list[str]:
    return [
        "--target_model", str(models["target"]), "--base_model", str(models["base"]),
        "--tuned_model", str(models["tuned"]),
        "--task_search_path", str(ROOT / "lm-evaluation-harness" / "demo"),
        "--jglue_tasks", "demo_target:0.5,demo_skill:0.5", "--jglue_limit", "100,100",
        "--jglue_holdout_limit", "200",
        # float32: the fine-tunes' deltas are small, bfloat16 would round part of them away
        "--dtype", "float32", "--device", "cpu", "--skip_embed",  # the demo fine-tunes froze the tied embedding
        "--batch_size", "32", "--output_dir", str(out / "model"), "--overwrite_output_dir",
        "--run_dir", str(out / "run"),
    ]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    cache = Path(os.environ.get("TVO_CACHE") or ROOT / ".cache" / "demo")
    models = prepare_demo_models(cache)
    script_main(JGLUE, demo_argv(models, ROOT / "demo_output") + sys.argv[1:])


if __name__ == "__main__":
    main()
