"""MoE runs end to end on tiny targets, judged in-process by SmolLM2 (logprob): 2 experts through the .sh
launcher (its example mergekit-moe config, hidden-state routers) and 4 experts through the Python script."""
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from transformers import AutoModelForCausalLM

from task_vector_opt.demo.smollm2 import prepare_smollm2
from task_vector_opt.search.study import FINISHED
from mini_bench import write_mini_bench
from tiny_models import make_moe_models

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 272  # the tiny tokenizer has 257 tokens


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_e2e")
    models = make_moe_models(root, "mistral", VOCAB, seed=20)
    judge = prepare_smollm2(Path(os.environ.get("TVO_CACHE") or ROOT / ".cache" / "demo"))
    write_mini_bench(root / "data")
    return {**models, "judge": judge, "data": root / "data"}


def common_flags(setup, tmp_path, n_experts):
    flags = []
    for index, target in enumerate(setup["targets"][:n_experts], start=1):
        flags += [f"--target_model_{index}", str(target)]
    return flags + ["--base_model", str(setup["base"]), "--tuned_model", str(setup["tuned"]),
                    "--judge_model_name", f"hf:{setup['judge']}", "--judge_rating_mode", "logprob",
                    "--bench_dir", str(setup["data"]), "--bench_name", "mini",
                    "--judge_file", str(setup["data"] / "judge_prompts.jsonl"), "--n_trials", "2",
                    "--max_new_tokens", "6", "--dtype", "float32", "--output_dir", str(tmp_path / "moe"),
                    "--run_dir", str(tmp_path / "run"), "--cache_dir", str(tmp_path / "hf_cache"),
                    "--judge_cache", str(tmp_path / "judge_cache.sqlite")]


def finished_trials(run_dir: Path):
    storage = f"sqlite:///{run_dir / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).get_trials(states=FINISHED)


def run(command, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHON=sys.executable, **(env_extra or {}))
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)


def test_two_experts_through_the_launcher_with_its_example_config(setup, tmp_path):
    done = run(["bash", str(ROOT / "run_merge_mt_bench_moe_2_experts.sh"), *common_flags(setup, tmp_path, 2)])
    assert done.returncode == 0, done.stderr[-4000:]
    trials = finished_trials(tmp_path / "run")
    assert len(trials) == 2 and all(1.0 <= t.value <= 10.0 for t in trials)
    # the default search: each expert's scale first, then its knots (2 for 2 layers) as factors of it
    assert set(trials[0].params) == {"scale/expert1", "scale/expert2", "expert1/knot_0", "expert1/knot_1",
                                     "expert1/embed_tokens", "expert1/norm", "expert1/lm_head", "expert2/knot_0",
                                     "expert2/knot_1"}
    assert [t.user_attrs["stage"] for t in trials] == ["scale", "scale"]
    assert set(trials[1].user_attrs["weights"].values()) == {0.0}  # the w=0 baseline, every expert
    for expert in (1, 2):
        out = tmp_path / f"moe-{expert}"
        recipe = json.loads((out / "merge_recipe.json").read_text())
        assert recipe["expert"] == expert and recipe["inputs"]["moe"]["gate_mode"] == "hidden"
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        assert type(model).__name__ == "MistralForCausalLM"
    assert not (tmp_path / "moe").exists()  # the MoE itself only with --save_moe
    assert "experts saved to" in done.stdout
    # The run's report goes beside expert 1 when the MoE itself is not saved.
    assert {"report.html", "optimization_history.png", "README.md"} <= {p.name for p in (tmp_path / "moe-1").iterdir()}


def test_four_experts_through_the_script_save_the_experts_and_the_moe(setup, tmp_path):
    done = run([sys.executable, str(ROOT / "merge_task_vector_mt_bench_moe_4_experts.py"),
                *common_flags(setup, tmp_path, 4), "--gate_mode", "random", "--optimize_mode", "parameter",
                "--save_moe"])
    assert done.returncode == 0, done.stderr[-4000:]
    trials = finished_trials(tmp_path / "run")
    assert len(trials) == 2
    assert len(trials[0].params) == 12 + 3 * 3  # base expert: every kind of tensor; the others: 3 MLP kinds
    for expert in range(1, 5):
        assert (tmp_path / f"moe-{expert}" / "model.safetensors").is_file()
    moe = AutoModelForCausalLM.from_pretrained(tmp_path / "moe", dtype=torch.float32)
    assert type(moe).__name__ == "MixtralForCausalLM" and moe.config.num_local_experts == 4
    assert "target_model" not in (tmp_path / "moe" / "mergekit_moe.yaml").read_text()
    assert (tmp_path / "moe" / "report.html").is_file()  # the report goes beside the MoE
