"""End to end on a tiny LLaVA: two trials through run_merge_vlm.sh with each metric (the judge on the loopback
server), and the JGLUE script with the VLM as its target. The saved VLM is exactly the scored one."""
import json
import statistics
import sys
from pathlib import Path

import pytest
from transformers import LlavaForConditionalGeneration

from task_vector_opt.evaluation.vlm_bench import JUDGE_SYSTEM, JapaneseRougeL
from task_vector_opt.search.study import FINISHED
from judge_server import reply
from tiny_models import make_trio
from vlm_models import make_llava
from vlm_launcher import assert_saved_vlm_is_target_plus_weighted_vector, launcher_args, only_study, run_launcher

ROOT = Path(__file__).resolve().parent.parent
DEMO_TASKS = ROOT / "lm-evaluation-harness" / "demo"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm_pipeline")
    return {**make_trio(root, "llama"), "target": make_llava(root / "vlm")}


def test_two_rouge_l_trials_through_the_launcher_save_the_scored_vlm(models, tmp_path):
    done = run_launcher(["bash", "run_merge_vlm.sh", *launcher_args(models, tmp_path), "--max_new_tokens", "6",
                "--gen_batch_size", "3", "--holdout_fraction", "0.25"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tensor(s) left exactly as the target's" in done.stderr and "vision_tower" in done.stderr
    study = only_study(tmp_path)
    trials = study.get_trials(states=FINISHED)
    # the baselines w=1 and w=0 (the scale stage's first trials: its scale, every offset 0)
    assert [set(t.user_attrs["weights"].values()) for t in trials] == [{1.0}, {0.0}]
    rouge = JapaneseRougeL()
    for trial in trials:  # each trial's value is the mean ROUGE-L of its recorded answers
        rows = [json.loads(line) for line in
                (tmp_path / "run" / "records" / f"trial_{trial.number:04d}" / "answers.jsonl").read_text().splitlines()]
        assert len(rows) == 6  # 8 items, 2 held out
        assert all(row["score"] == rouge.score(row["reference"], row["answer"]) for row in rows)
        assert trial.value == pytest.approx(statistics.fmean(row["score"] for row in rows))
    recipe = json.loads((tmp_path / "out" / "merge_recipe.json").read_text())
    assert set(recipe["holdout_score"]) >= {"w=0", "w=1"}
    assert recipe["inputs"]["optimize_mode"] == "profile"  # the default (auto) for one language vector
    # the recipe's weights per layer group (profile mode: interpolated from the knots the sampler proposed)
    assert_saved_vlm_is_target_plus_weighted_vector(models, tmp_path / "out", recipe["weights"], LlavaForConditionalGeneration)


def test_two_judged_trials_through_the_launcher_use_our_rubric(models, tmp_path, judge_server):
    judge_server.reset()
    ratings = iter([3, 8] * 50)
    judge_server.rule = lambda body: reply(f"Rating: [[{next(ratings)}]]")
    done = run_launcher(["bash", "run_merge_vlm.sh", *launcher_args(models, tmp_path), "--max_new_tokens", "4", "--vlm_metric",
                "judge", "--judge_model_name", "gpt-4o", "--judge_backend", "openai", "--judge_base_url",
                f"{judge_server.url}/v1", "--judge_cache", "none", "--parallel", "1"],
               OPENAI_API_KEY="sk-test-vlm")
    assert done.returncode == 0, done.stderr[-3000:]
    assert judge_server.count == 1 + 2 * 8  # the probe before the models load, then 2 trials x 8 items, no holdout
    assert judge_server.requests[0].body["max_tokens"] == 1
    first = judge_server.requests[1].body["messages"]
    assert first[0]["content"] == JUDGE_SYSTEM and "[参照回答 / Reference answer]" in first[1]["content"]
    trials = only_study(tmp_path).get_trials(states=FINISHED)
    assert [t.value for t in trials] == [5.5, 5.5]  # ratings 3 and 8 alternate: a mean of 5.5 per trial
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_the_jglue_script_scores_a_vlm_target_on_text_and_saves_the_whole_vlm(models, tmp_path):
    done = run_launcher([sys.executable, "merge_task_vector_jglue.py", *launcher_args(models, tmp_path), "--task_search_path",
                str(DEMO_TASKS), "--jglue_tasks", "demo_skill", "--jglue_limit", "8"])
    assert done.returncode == 0, done.stderr[-3000:]
    study = only_study(tmp_path)
    assert len(study.get_trials(states=FINISHED)) == 2
    recipe = json.loads((tmp_path / "out" / "merge_recipe.json").read_text())
    assert_saved_vlm_is_target_plus_weighted_vector(models, tmp_path / "out", recipe["weights"], LlavaForConditionalGeneration)
