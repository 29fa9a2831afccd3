"""The held-out verdict of a VLM run: each held-out item's value under the best merge, paired with its value under
w=1 and w=0, gives the interval the summary, the recipe and the report show, with ROUGE-L and with a judge."""
import json
import os
import statistics
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from judge_server import reply
from tiny_models import make_trio
from vlm_models import make_llava

ROOT = Path(__file__).resolve().parent.parent
BENCH_ITEMS = 8  # examples/vlm_bench
HELD_OUT = 4  # --holdout_fraction 0.5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm_verdict")
    return {**make_trio(root, "llama"), "target": make_llava(root / "vlm")}


def rating_of(body) -> int:
    """A rating that depends on the answer the judge is shown, so merges that answer differently rate differently."""
    answer = body["messages"][-1]["content"].rsplit("[モデルの回答 / Model's answer]", 1)[-1]
    return 1 + zlib.crc32(answer.encode()) % 10


def held_out_rows(run_dir: Path) -> list[list[dict]]:
    folders = sorted((run_dir / "records").glob("holdout_*"))
    return [[json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines()] for folder in folders]


@pytest.mark.parametrize("metric", ["rouge_l", "judge"])
def test_a_vlm_run_with_held_out_items_gives_a_paired_verdict_against_both_baselines(models, tmp_path, judge_server,
                                                                                     metric):
    judge_flags = []
    if metric == "judge":
        judge_server.reset()
        judge_server.rule = lambda body: reply(f"Rating: [[{rating_of(body)}]]")
        judge_flags = ["--judge_model_name", "gpt-4o", "--judge_backend", "openai", "--judge_base_url",
                       f"{judge_server.url}/v1", "--judge_cache", "none", "--parallel", "1"]
    out, run_dir = tmp_path / "out", tmp_path / "run"
    done = subprocess.run(
        ["bash", "run_merge_vlm.sh", "--target_model", str(models["target"]), "--base_model", str(models["base"]),
         "--tuned_model", str(models["tuned"]), "--dtype", "float32", "--device", "cpu", "--n_trials", "3",
         "--output_dir", str(out), "--run_dir", str(run_dir), "--cache_dir", str(tmp_path / "cache"),
         "--max_new_tokens", "6", "--gen_batch_size", "4", "--holdout_fraction", "0.5", "--vlm_metric", metric,
         *judge_flags],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable, OPENAI_API_KEY="sk-test-vlm-verdict"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no per-item held-out scores" not in done.stdout

    recipe = json.loads((out / "merge_recipe.json").read_text())
    holdout, verdict = recipe["holdout_score"], recipe["holdout_verdict"]
    assert {"w=0", "w=1", "best"} <= set(holdout)
    assert len(verdict["sentences"]) == 2
    for reference in ("w=1", "w=0"):
        comparison = verdict[f"vs {reference}"]
        assert comparison is not None and comparison["n_items"] == HELD_OUT
        # the mean paired difference over held-out items is exactly the difference of the held-out scores
        assert comparison["difference"] == pytest.approx(holdout["best"] - holdout[reference], abs=1e-9)
        assert comparison["low"] <= comparison["difference"] <= comparison["high"]
    for sentence in verdict["sentences"]:
        assert "held-out items" in sentence or sentence.startswith("the best search trial is")
        assert f"verdict          : {sentence}" in done.stdout

    # each held-out pass scored the same items, and its score is the mean of their recorded values
    passes = held_out_rows(run_dir)
    assert len(passes) == len(set(holdout) - {"best"})
    for rows in passes:
        assert len(rows) == HELD_OUT and len({row["id"] for row in rows}) == HELD_OUT
        mean = statistics.fmean(row["score"] for row in rows)
        assert any(mean == pytest.approx(value, abs=1e-9) for value in holdout.values())
    assert {row["id"] for row in passes[0]} == {row["id"] for row in passes[-1]}
    # the search trials count what they scored, as MT-Bench's do
    assert recipe["items_scored"] == 3 * (BENCH_ITEMS - HELD_OUT)


def vlm_evaluator(run_dir: Path, *flags: str):
    from task_vector_opt.cli.pipelines import VLM
    from task_vector_opt.evaluation.vlm_bench import VLMBenchEvaluator, vlm_bench_settings_from_args

    args = VLM.command_line.parser().parse_args(["--max_new_tokens", "4", "--gen_batch_size", "2", *flags])
    return VLMBenchEvaluator(vlm_bench_settings_from_args(args), run_dir)


def test_a_vlm_score_gives_each_items_value_and_a_pruned_trial_counts_the_items_it_cost(models, tmp_path):
    import optuna
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(models["target"], dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(models["target"])
    scorer = vlm_evaluator(tmp_path / "run", "--holdout_fraction", "0.5")
    held_out = scorer.holdout(model, processor)
    assert set(held_out.item_values) == {item.item_id for item in scorer.holdout_items}
    assert held_out.value == pytest.approx(statistics.fmean(held_out.item_values.values()))
    assert held_out.items_scored == HELD_OUT and held_out.details["rated"] == HELD_OUT

    pruning = vlm_evaluator(tmp_path / "pruned", "--chunk_size", "1", "--prune")
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=101.0))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="after 1 items"):
        pruning.score(model, processor, trial)
    assert trial.storage.get_trial(trial._trial_id).user_attrs["items_scored"] == 1
    rows = (tmp_path / "pruned" / "records" / f"trial_{trial.number:04d}" / "answers.jsonl").read_text().splitlines()
    assert len(rows) == 1  # the answers it paid for are recorded; the other 7 were never generated
