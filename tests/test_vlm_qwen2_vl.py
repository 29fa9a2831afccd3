"""The Qwen2-VL image scorer end to end, with the real Qwen2VLProcessor and a tiny random Qwen2-VL: the prompts
carry the image's tokens and its pixels reach the vision tower; two trials through run_merge_vlm.sh with each
metric (the judge on the loopback server); the saved VLM is exactly the scored one, with its processor.

Qwen2VLProcessor needs torchvision (its video processor), which .venv's CPU torch has no match for: these tests
are marked vision, and scripts/test.sh runs them in .venv-vision (bash scripts/setup.sh vision). Where torchvision
is missing they fail (tests/conftest.py), never skip."""
import json
import statistics
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

from task_vector_opt.evaluation.vlm_bench import DEFAULT_BENCH_FILE, JUDGE_SYSTEM, ImageAnswerer, JapaneseRougeL, \
    load_vlm_bench
from task_vector_opt.merging.models import load_model
from task_vector_opt.search.study import FINISHED
from judge_server import reply
from tiny_models import make_trio
from vlm_models import IMAGE_SIZE, make_qwen2_vl
from vlm_launcher import assert_saved_vlm_is_target_plus_weighted_vector, launcher_args, only_study, run_launcher

pytestmark = pytest.mark.vision

ROOT = Path(__file__).resolve().parent.parent
# a 28 px image: 2 x 2 rows of 14 px patches (the frame, doubled to the temporal patch size 2, within each row);
# 2 x 2 merging makes them one token
PATCHES_PER_IMAGE = (IMAGE_SIZE // 14) ** 2
IMAGE_TOKENS = PATCHES_PER_IMAGE // 2 ** 2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen2_vl")
    return {**make_trio(root, "qwen2"), "target": make_qwen2_vl(root / "vlm", processor=True)}


def test_the_real_processor_puts_the_image_in_the_prompt_and_its_pixels_reach_the_vision_tower(models, one_thread):
    processor = AutoProcessor.from_pretrained(models["target"])
    assert type(processor).__name__ == "Qwen2VLProcessor" and processor.video_processor is not None
    model, _ = load_model(models["target"], "float32", "cpu", trust_remote_code=False, allow_pickle=False)
    assert type(model) is Qwen2VLForConditionalGeneration
    items = load_vlm_bench(ROOT / DEFAULT_BENCH_FILE)[:3]
    answerer = ImageAnswerer(processor, max_new_tokens=3, batch_size=2)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in answerer.prompt(items[0])

    seen = []  # what the vision tower gets: the patch rows of each batch and their grid
    hook = model.model.visual.register_forward_hook(
        lambda module, args, kwargs, output: seen.append((args[0] if args else kwargs["hidden_states"],
                                                          kwargs.get("grid_thw"))), with_kwargs=True)
    try:
        answers = answerer.answer(model, items)
    finally:
        hook.remove()
    assert len(answers) == 3 and all(isinstance(answer, str) for answer in answers)
    assert len(seen) == 2  # one vision pass per batch (2 items, then 1), at the prompt; new tokens reuse the cache
    assert [len(pixels) for pixels, _ in seen] == [2 * PATCHES_PER_IMAGE, PATCHES_PER_IMAGE]
    # the last batch's patches are exactly the processor's pixels of its item's image
    alone = processor.image_processor(images=[answerer.image(items[2].image)], return_tensors="pt")
    assert torch.equal(seen[1][0], alone["pixel_values"])
    assert seen[1][1].tolist() == alone["image_grid_thw"].tolist() == [[1, 2, 2]]
    # the processor expanded the one <|image_pad|> of the chat template into the image's tokens
    inputs = processor(text=[answerer.prompt(items[0])], images=[[answerer.image(items[0].image)]],
                       return_tensors="pt")
    assert (inputs["input_ids"] == processor.image_token_id).sum().item() == IMAGE_TOKENS


def assert_saved_is_target_plus_weighted_vector(models, out: Path, weights: dict[str, float]):
    """The shared check (vlm_launcher), and Qwen2-VL's own: its vision tower is there (and so was kept as the
    target's bytes), and the saved processor is Qwen2-VL's, whole."""
    target = assert_saved_vlm_is_target_plus_weighted_vector(models, out, weights, Qwen2VLForConditionalGeneration)
    assert any(name.startswith("model.visual.") for name in target)
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == "Qwen2VLProcessor"
    assert processor.chat_template and processor.image_processor is not None and processor.video_processor is not None


@pytest.mark.e2e
def test_two_rouge_l_trials_through_the_launcher_score_images_and_save_the_scored_qwen2_vl(models, tmp_path):
    done = run_launcher(["bash", "run_merge_vlm.sh", *launcher_args(models, tmp_path), "--max_new_tokens", "6",
                "--gen_batch_size", "3", "--holdout_fraction", "0.25"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tensor(s) left exactly as the target's" in done.stderr
    trials = only_study(tmp_path).get_trials(states=FINISHED)
    assert [set(t.user_attrs["weights"].values()) for t in trials] == [{1.0}, {0.0}]  # the baselines w=1, w=0
    rouge = JapaneseRougeL()
    for trial in trials:  # each trial's value is the mean ROUGE-L of its recorded answers
        rows = [json.loads(line) for line in
                (tmp_path / "run" / "records" / f"trial_{trial.number:04d}" / "answers.jsonl").read_text().splitlines()]
        assert len(rows) == 6  # 8 items, 2 held out
        assert all(row["score"] == rouge.score(row["reference"], row["answer"]) for row in rows)
        assert trial.value == pytest.approx(statistics.fmean(row["score"] for row in rows))
    recipe = json.loads((tmp_path / "out" / "merge_recipe.json").read_text())
    assert set(recipe["holdout_score"]) >= {"w=0", "w=1"}
    assert_saved_is_target_plus_weighted_vector(models, tmp_path / "out", recipe["weights"])


@pytest.mark.e2e
def test_two_judged_trials_through_the_launcher_send_each_answer_to_the_judge(models, tmp_path, judge_server):
    judge_server.reset()
    ratings = iter([2, 9] * 50)
    judge_server.rule = lambda body: reply(f"Rating: [[{next(ratings)}]]")
    done = run_launcher(["bash", "run_merge_vlm.sh", *launcher_args(models, tmp_path), "--max_new_tokens", "4", "--vlm_metric",
                "judge", "--judge_model_name", "gpt-4o", "--judge_backend", "openai", "--judge_base_url",
                f"{judge_server.url}/v1", "--judge_cache", "none", "--parallel", "1"],
               OPENAI_API_KEY="sk-test-qwen2-vl")
    assert done.returncode == 0, done.stderr[-3000:]
    assert judge_server.count == 1 + 2 * 8  # the probe before the models load, then 2 trials x 8 items
    items = load_vlm_bench(ROOT / DEFAULT_BENCH_FILE)
    judged = [request.body["messages"] for request in judge_server.requests[1:]]
    assert all(messages[0]["content"] == JUDGE_SYSTEM for messages in judged)
    for item in items:  # every item's question and reference reach the judge in each trial
        assert sum(item.question in m[1]["content"] and item.answer in m[1]["content"] for m in judged) == 2
    assert [t.value for t in only_study(tmp_path).get_trials(states=FINISHED)] == [5.5, 5.5]  # ratings 2 and 9 alternate: 5.5 a trial
    assert (tmp_path / "out" / "model.safetensors").is_file()
