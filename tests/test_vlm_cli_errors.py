"""Each bad input of a VLM run gets one line naming the flag, exit code 2, and no model is loaded."""
import json
import shutil
from pathlib import Path

import pytest

from task_vector_opt import engine
from task_vector_opt.cli.pipelines import JGLUE, VLM, run_pipeline
from task_vector_opt.merging import models as model_files
from cli_checks import expect_usage_error, refuse_model_loads
from tiny_models import make_model, make_trio, save
from vlm_models import make_llava

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_IMAGE = ROOT / "examples" / "vlm_bench" / "images" / "red_circle.png"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm_cli")
    trio = make_trio(root, "llama")
    vlm = make_llava(root / "vlm")
    # A VLM whose text model is not a language model we know how to map (its config says "bert").
    unknown = root / "vlm_unknown_text"
    shutil.copytree(vlm, unknown)
    config = json.loads((unknown / "config.json").read_text())
    config["text_config"]["model_type"] = "bert"
    (unknown / "config.json").write_text(json.dumps(config))
    return {**trio, "vlm": vlm, "unknown": unknown,
            "qwen": save(make_model("qwen2", seed=3), None, root / "qwen"),
            "wide": save(make_model("llama", seed=3, hidden=64), None, root / "wide")}


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    refuse_model_loads(monkeypatch, engine, model_files)


def bench(tmp_path, *items, image=EXAMPLE_IMAGE) -> Path:
    folder = tmp_path / "bench"
    folder.mkdir(exist_ok=True)
    shutil.copy(image, folder / "picture.png")
    rows = items or ({"question": "何色？", "image": "picture.png", "answer": "赤です。"},)
    (folder / "bench.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return folder / "bench.jsonl"


def argv(models, tmp_path, *extra, target=None, base=None, bench_file=None):
    return ["--target_model", str(target or models["vlm"]), "--base_model", str(base or models["base"]),
            "--tuned_model", str(models["tuned"]), "--vlm_bench_file", str(bench_file or bench(tmp_path)),
            "--output_dir", str(tmp_path / "out"), "--run_dir", str(tmp_path / "run"), "--device", "cpu", *extra]


def run_vlm(arguments):
    return lambda _argv: run_pipeline(VLM, arguments)


def test_a_vlm_whose_language_model_is_another_architecture_is_refused(models, tmp_path, capsys):
    expect_usage_error(run_vlm(argv(models, tmp_path, base=models["qwen"])), None, capsys, "--target_model",
                       "'llama'", "--base_model is a 'qwen2' model")


def test_a_vlm_whose_language_model_has_another_shape_is_refused(models, tmp_path, capsys):
    expect_usage_error(run_vlm(argv(models, tmp_path, base=models["wide"])), None, capsys, "--target_model",
                       "hidden_size=32 but --base_model has 64")


def test_a_vlm_as_base_model_is_refused(models, tmp_path, capsys):
    expect_usage_error(run_vlm(argv(models, tmp_path, base=models["vlm"])), None, capsys, "--base_model",
                       "itself a vision-language model")


def test_a_target_without_a_recognisable_language_model_is_refused(models, tmp_path, capsys):
    expect_usage_error(run_vlm(argv(models, tmp_path, target=models["unknown"])), None, capsys, "--target_model",
                       "without a recognisable language model", "'bert'")


def test_the_image_bench_refuses_a_text_only_target(models, tmp_path, capsys):
    expect_usage_error(run_vlm(argv(models, tmp_path, target=models["target"])), None, capsys, "--target_model",
                       "not a vision-language model")


def test_the_jglue_script_refuses_a_mismatched_vlm_too(models, tmp_path, capsys):
    arguments = ["--target_model", str(models["vlm"]), "--base_model", str(models["qwen"]), "--tuned_model",
                 str(models["tuned"]), "--output_dir", str(tmp_path / "out"), "--run_dir", str(tmp_path / "run")]
    expect_usage_error(lambda _argv: run_pipeline(JGLUE, arguments), None, capsys, "--target_model",
                       "--base_model is a 'qwen2' model")


def test_a_missing_image_is_refused_with_its_line(models, tmp_path, capsys):
    file = bench(tmp_path, {"question": "何色？", "image": "picture.png", "answer": "赤"},
                 {"question": "何色？", "image": "nowhere.png", "answer": "赤"})
    expect_usage_error(run_vlm(argv(models, tmp_path, bench_file=file)), None, capsys, "--vlm_bench_file",
                       f"{file}:2", "nowhere.png", "not found")


def test_an_unreadable_image_is_refused(models, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(EXAMPLE_IMAGE.read_bytes()[:40])  # a truncated PNG
    file = bench(tmp_path, image=broken)
    expect_usage_error(run_vlm(argv(models, tmp_path, bench_file=file)), None, capsys, "--vlm_bench_file",
                       "picture.png", "cannot be read")


@pytest.mark.parametrize("missing", ["question", "answer"])
def test_an_item_without_question_or_answer_is_refused(models, tmp_path, capsys, missing):
    item = {"question": "何色？", "image": "picture.png", "answer": "赤"}
    del item[missing]
    file = bench(tmp_path, item)
    expect_usage_error(run_vlm(argv(models, tmp_path, bench_file=file)), None, capsys, "--vlm_bench_file",
                       f"{file}:1", f"no '{missing}'")


def test_the_judge_metric_without_a_judge_is_refused(models, tmp_path, capsys):
    expect_usage_error(run_vlm(argv(models, tmp_path, "--vlm_metric", "judge")), None, capsys, "--vlm_metric",
                       "--judge_model_name")


def test_a_good_vlm_command_passes_validation_and_plans_only_the_language_model(models, tmp_path, capsys):
    run_pipeline(VLM, argv(models, tmp_path, "--dry_run", "--optimize_mode", "layer"))
    plan = json.loads(capsys.readouterr().out)
    assert plan["weights"] == 5 and plan["tensors"] == 21  # embed, 2 layers, norm, lm_head; 2 x 9 + 3 tensors
    assert "ROUGE-L" in plan["evaluator"]
