"""The offline demo: prepare SmolLM2 base / tuned / target, then run the JGLUE-style optimizer on demo_skill.

    python -m task_vector_opt.demo [extra flags for merge_task_vector_jglue.py]

Models are cached in $TVO_CACHE (default .cache/demo); outputs go to demo_output/: the merged model with its
report (demo_output/model/report.html, optimization_history.png, best_weights.png) and model card (README.md).
The pictures in the README's "Demo results" are that run's PNGs, copied to docs/.
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
        "--task_search_path", str(ROOT / "lm-evaluation-harness" / "demo"), "--jglue_tasks", "demo_skill",
        "--jglue_limit", "100", "--jglue_holdout_limit", "200",
        "--optimize_mode", "layer", "--n_trials", "20", "--optuna_sampler", "TPE", "--optuna_seed", "42",
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
