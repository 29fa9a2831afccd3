"""MT-Bench end to end through run_merge_mt_bench.sh on SmolLM2-made models, judged in-process (logprob)."""
import json
import os
import subprocess
from pathlib import Path

import optuna
import pytest
import torch
from transformers import AutoModelForCausalLM

from task_vector_opt.demo.smollm2 import prepare_smollm2
from task_vector_opt.search.study import FINISHED
from mini_bench import write_mini_bench

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smol_models(tmp_path_factory):
    """base = SmolLM2-135M-Instruct, tuned = base nudged along a fixed random direction, target = base."""
    base = prepare_smollm2(Path(os.environ.get("TVO_CACHE") or ROOT / ".cache" / "demo"))
    tuned_dir = tmp_path_factory.mktemp("smol") / "tuned"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * param.std() * 0.02)
    model.save_pretrained(tuned_dir)
    return {"base": base, "tuned": tuned_dir, "target": base}


def test_three_trial_run_through_the_launcher_saves_the_best_model(smol_models, tmp_path):
    out, run_dir = tmp_path / "model", tmp_path / "run"
    # A short bench and short judge prompts in FastChat's formats keep the CPU run to a minute or two.
    write_mini_bench(tmp_path / "data")
    overrides = ["--target_model", str(smol_models["target"]), "--base_model", str(smol_models["base"]),
                 "--tuned_model", str(smol_models["tuned"]), "--judge_model_name", f"hf:{smol_models['base']}",
                 "--n_trials", "3", "--output_dir", str(out), "--cache_dir", str(tmp_path / "hf_cache"),
                 "--bench_dir", str(tmp_path / "data"), "--bench_name", "mini",
                 "--judge_file", str(tmp_path / "data" / "judge_prompts.jsonl"),
                 # CPU-sized settings beside the launcher's own flags
                 "--judge_rating_mode", "logprob", "--max_new_tokens", "12", "--dtype", "float32",
                 "--run_dir", str(run_dir), "--judge_cache", str(tmp_path / "judge_cache.sqlite"),
                 "--holdout_fraction", "0.25", "--gen_batch_size", "8"]
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHON=str(Path(os.sys.executable)))
    done = subprocess.run(["bash", str(ROOT / "run_merge_mt_bench.sh"), *overrides], capture_output=True, text=True,
                          env=env, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]

    storage = f"sqlite:///{run_dir / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(states=FINISHED)
    assert len(trials) == 3
    for trial in trials:
        assert 1.0 <= trial.value <= 10.0
        assert trial.user_attrs["excluded"] == 0 and trial.user_attrs["judged"] > 0
        assert trial.user_attrs["judge/requests"] + trial.user_attrs["judge/cache_hits"] > 0
        records = run_dir / "records" / f"trial_{trial.number:04d}"
        answers = [json.loads(line) for line in (records / "answers.jsonl").read_text().splitlines()]
        judgments = [json.loads(line) for line in (records / "judgments.jsonl").read_text().splitlines()]
        assert answers and all(len(a["choices"][0]["turns"]) == 2 for a in answers)
        assert {j["turn"] for j in judgments} == {1, 2} and all(1 <= j["score"] <= 10 for j in judgments)

    recipe = json.loads((out / "merge_recipe.json").read_text())
    assert recipe["best"]["score"] == study.best_value
    assert {"w=0", "w=1", "best"} <= set(recipe["holdout_score"])
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert "held-out scores" in done.stdout
