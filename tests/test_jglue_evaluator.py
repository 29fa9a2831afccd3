"""The JGLUE evaluator: lm-eval tasks on the live model, offline, on a tiny random Llama.

The key acceptance test runs the real lm-eval CLI on the same local JGLUE files and the same saved model.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.protocol import Score
from task_vector_opt.evaluation.jglue import DEFAULT_LIMIT, JGLUEEvaluator, JGLUESettings, jglue_settings_from_args
from task_vector_opt.evaluation.lm_eval_tasks.local_data import LocalTaskFiles, write_local_tasks
from task_vector_opt.evaluation.lm_eval_tasks.resolution import ja_leaderboard_dir, resolve_tasks, task_manager
from task_vector_opt.evaluation.lm_eval_tasks.scoring import primary_metric
from task_vector_opt.evaluation.lm_eval_tasks.table import TASK_FAMILIES
from task_vector_opt.evaluation.lm_eval_tasks.task_list import parse_task_list

JGLUE_TASKS = "jcommonsenseqa-1.1-0.3,jnli-1.3-0.2,jsquad-1.1-0.2"
LOCAL_TASKS = ["jglue_local_jcommonsenseqa", "jglue_local_jnli", "jglue_local_jsquad"]
LIMIT = 4  # search documents per task in these tests (each task has 6 validation documents)
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One CPU thread, here and in the lm-eval CLI run: the same kernels on both sides, and no slowdown when
    other processes share the two cores (two OpenMP threads then wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ test data

JCQA = [  # question, choices (all two characters: see make_model), label
    ("雨の日に使うものは？", ["雨傘", "鉛筆", "時計", "お皿", "靴下"], 0),
    ("魚が住んでいる場所は？", ["山頂", "川底", "夜空", "机上", "本棚"], 1),
    ("朝ごはんを食べる時間は？", ["夜中", "昼間", "早朝", "夕方", "深夜"], 2),
    ("字を書く道具は？", ["お箸", "お鍋", "雨傘", "鉛筆", "長靴"], 3),
    ("冬に着るものは？", ["水着", "帽子", "半袖", "草履", "外套"], 4),
    ("猫が好きな食べ物は？", ["焼魚", "小石", "和紙", "砂利", "鉄板"], 0),
]
JNLI = [  # premise, hypothesis, label (strings, as in the official files)
    ("男性が公園を歩いている。", "人が公園にいる。", "entailment"),
    ("女性が台所で料理をしている。", "女性は寝ている。", "contradiction"),
    ("子供がボールで遊んでいる。", "子供は楽しそうだ。", "neutral"),
    ("犬が草の上を走っている。", "動物が動いている。", "entailment"),
    ("電車が駅に止まっている。", "電車は空を飛んでいる。", "contradiction"),
    ("猫が窓の外を見ている。", "猫は鳥を探している。", "neutral"),
]
JSQUAD = [  # title, text, [(question, answer)]
    ("東京", "東京は日本の首都である。人口がとても多い。", [("日本の首都はどこ？", "東京"), ("人口はどうか？", "とても多い")]),
    ("富士山", "富士山は日本で一番高い山である。", [("日本で一番高い山は？", "富士山")]),
    ("京都", "京都には古い寺がたくさんある。", [("京都にたくさんあるものは？", "古い寺")]),
    ("北海道", "北海道は冬に雪が多く降る。", [("北海道で冬に多く降るものは？", "雪")]),
    ("大阪", "大阪はたこ焼きで有名な町である。", [("大阪は何で有名か？", "たこ焼き")]),
]
USER_MC = [  # my_task: question, choices, gold index
    ("空の色は？", ["青", "赤", "黒"], 0), ("夜は暗いか？", ["否", "是", "微"], 1),
    ("水は冷たいか？", ["熱", "乾", "冷"], 2), ("雪の色は？", ["白", "緑", "黄"], 0),
    ("火は熱いか？", ["否", "是", "微"], 1),
]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def squad_file(items) -> dict:
    data = []
    for title, text, qas in items:
        context = f"{title} [SEP] {text}"
        questions = [{"id": f"{title}-{j}", "question": q, "answers": [{"text": a, "answer_start": context.find(a)}],
                      "is_impossible": False} for j, (q, a) in enumerate(qas)]
        data.append({"title": title, "paragraphs": [{"context": context, "qas": questions}]})
    return {"version": "v1.3", "data": data}


def write_jglue_copy(root: Path) -> Path:
    """A tiny copy of the official JGLUE repository layout (v1.3 files)."""
    jcqa = [{"q_id": i, "question": q, **{f"choice{k}": c for k, c in enumerate(cs)}, "label": label}
            for i, (q, cs, label) in enumerate(JCQA)]
    jnli = [{"sentence_pair_id": str(i), "yjcaptions_id": f"{i}-{i}", "sentence1": a, "sentence2": b, "label": label}
            for i, (a, b, label) in enumerate(JNLI)]
    for name, rows in (("jcommonsenseqa", jcqa), ("jnli", jnli)):
        write_jsonl(root / f"datasets/{name}-v1.3/train-v1.3.json", rows)
        write_jsonl(root / f"datasets/{name}-v1.3/valid-v1.3.json", rows[::-1])
    squad_dir = root / "datasets/jsquad-v1.3"
    squad_dir.mkdir(parents=True)
    (squad_dir / "train-v1.3.json").write_text(json.dumps(squad_file(JSQUAD[:3]), ensure_ascii=False), "utf-8")
    (squad_dir / "valid-v1.3.json").write_text(json.dumps(squad_file(JSQUAD[::-1]), ensure_ascii=False), "utf-8")
    return root


GOLD_PROBABILITY = '''import math


def gold_probability(doc, results):
    """Softmax probability of the gold choice among the choices' log-likelihoods (continuous, 0..1)."""
    lls = [ll for ll, _ in results]
    top = max(lls)
    weights = [math.exp(ll - top) for ll in lls]
    return {"gold_prob": weights[doc["gold"]] / sum(weights)}
'''


def write_user_tasks(root: Path) -> Path:
    """--task_search_path: a plain multiple-choice task and one with its own process_results."""
    data = root / "data.jsonl"
    write_jsonl(data, [{"question": q, "choices": cs, "gold": g} for q, cs, g in USER_MC])
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: {json.dumps(str(data))}\n"
              "validation_split: validation\noutput_type: multiple_choice\n"
              "doc_to_text: \"質問：{{question}}\\n答え：\"\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: gold\n")
    (root / "my_task.yaml").write_text("task: my_task\n" + common +
                                       "metric_list:\n  - metric: acc\n    aggregation: mean\n"
                                       "    higher_is_better: true\n", "utf-8")
    (root / "utils.py").write_text(GOLD_PROBABILITY, "utf-8")
    (root / "other.yaml").write_text("task: other\n" + common +
                                     "process_results: !function utils.gold_probability\n"
                                     "metric_list:\n  - metric: gold_prob\n    aggregation: mean\n"
                                     "    higher_is_better: true\n", "utf-8")
    return root


# ---------------------------------------------------------------------------------- tiny model + tokenizer

def fixture_text() -> str:
    parts = [q + "".join(cs) for q, cs, _ in JCQA + USER_MC] + [a + b for a, b, _ in JNLI]
    parts += [title + text + "".join(q + a for q, a in qas) for title, text, qas in JSQUAD]
    parts += [p.read_text(encoding="utf-8") for p in ja_leaderboard_dir().glob("*.yaml")]  # the prompt templates
    return "".join(parts) + "質問答え[SEP] \n"


def make_tokenizer():
    """A character-level tokenizer over the fixture text (Japanese included), built offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for char in sorted(set(fixture_text())):
        vocab.setdefault(char, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")


def make_model(vocab_size: int, eos_id: int):
    """A random 2-layer Llama whose greedy continuation is always EOS, so that generation tasks stop after one
    token (random weights would generate 256 tokens): one residual dimension is held at 1.0 (embeddings set,
    every layer's writes to it zeroed) and only EOS reads it in lm_head. Every other token then pays about the
    same log-probability per token, so the choices of a multiple-choice question have equal lengths in the test
    data: their ranking stays random, driven by the context (few-shot examples included)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=vocab_size, max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=eos_id, pad_token_id=3, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
        model.model.embed_tokens.weight[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0].zero_()
            layer.mlp.down_proj.weight[0].zero_()
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[eos_id, 0] = 30.0
    return model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = make_tokenizer()
    model = make_model(len(tokenizer), tokenizer.eos_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def live(model_dir):
    """The model and tokenizer as the product holds them: loaded from the saved directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def jglue_dir(tmp_path_factory) -> Path:
    return write_jglue_copy(tmp_path_factory.mktemp("JGLUE"))


@pytest.fixture(scope="session")
def user_tasks(tmp_path_factory) -> Path:
    return write_user_tasks(tmp_path_factory.mktemp("my_tasks"))


def flags(**values) -> argparse.Namespace:
    """The JGLUE flags as argparse leaves them (strings), with the CLI's defaults."""
    from task_vector_opt.cli.flags import JGLUE_FLAGS

    defaults = {flag.dest or flag.name.lstrip("-"): flag.default for flag in JGLUE_FLAGS}
    defaults["jglue_tasks"] = JGLUE_TASKS
    defaults["search_objective"] = "task"  # these tests check each task's own metric; choice_prob: test_scale_first
    defaults.update(values)
    return argparse.Namespace(**defaults)


@pytest.fixture(scope="session")
def jglue_settings(jglue_dir) -> JGLUESettings:
    return jglue_settings_from_args(flags(jglue_data_dir=str(jglue_dir), jglue_limit=str(LIMIT),
                                          jglue_holdout_limit="2", batch_size="4"))


@pytest.fixture(scope="session")
def jglue_evaluator(jglue_settings, tmp_path_factory) -> JGLUEEvaluator:
    return JGLUEEvaluator(jglue_settings, tmp_path_factory.mktemp("run") / "lm_eval_tasks")


@pytest.fixture(scope="session")
def hflm_evaluator(jglue_settings, tmp_path_factory) -> JGLUEEvaluator:
    """The same tasks scored by lm-eval's own HFLM (--mc_scorer hflm) instead of the context-once default."""
    settings = dataclasses.replace(jglue_settings, mc_scorer="hflm")
    return JGLUEEvaluator(settings, tmp_path_factory.mktemp("run_hflm") / "lm_eval_tasks")


# ------------------------------------------------------------------------------------- acceptance test

def run_lm_eval_cli(model_dir: Path, tasks: list[str], include_path: Path, limit: int, batch_size: int,
                    out: Path) -> tuple[dict, dict[str, list[dict]]]:
    """``python -m lm_eval`` on the saved model: its results JSON and its logged samples per task."""
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
           "--tasks", ",".join(tasks), "--include_path", str(include_path), "--limit", str(limit),
           "--batch_size", str(batch_size), "--device", "cpu", "--output_path", str(out), "--log_samples"]
    done = subprocess.run(cmd, env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = out.rglob("results_*.json")
    samples = {}
    for task in tasks:
        (samples_file,) = out.rglob(f"samples_{task}_*.jsonl")
        samples[task] = [json.loads(line) for line in samples_file.read_text(encoding="utf-8").splitlines()]
    return json.loads(results_file.read_text(encoding="utf-8")), samples


def model_calls_of_cli(samples: dict[str, list[dict]]) -> dict[tuple[str, str], object]:
    """(prompt, continuation or generation settings) -> log-likelihood or generated text, from logged samples."""
    calls = {}
    for docs in samples.values():
        for doc in docs:
            for (_, args), resp in zip(sorted(doc["arguments"].items()), doc["resps"], strict=True):
                second = args["arg_1"]
                if isinstance(second, dict):
                    calls[(args["arg_0"], json.dumps(second, sort_keys=True))] = resp[0]
                else:
                    calls[(args["arg_0"], second)] = float(resp[0][0])
    return calls


def record_model_calls(monkeypatch) -> dict[tuple[str, str], object]:
    """The same mapping for our in-process runs: spy on lm-eval's HFLM."""
    from lm_eval.models.huggingface import HFLM

    calls: dict[tuple[str, str], object] = {}

    def spy(name):
        real = getattr(HFLM, name)

        def method(self, requests, disable_tqdm=False):
            outputs = real(self, requests, disable_tqdm=disable_tqdm)
            for request, output in zip(requests, outputs, strict=True):
                context, second = request.args
                if isinstance(second, dict):
                    calls[(context, json.dumps(second, sort_keys=True))] = output
                else:
                    calls[(context, second)] = float(output[0])
            return outputs
        monkeypatch.setattr(HFLM, name, method)

    spy("loglikelihood")
    spy("generate_until")
    return calls


def test_the_jglue_path_scores_a_fixed_model_exactly_as_the_lm_eval_cli_does_on_the_same_local_data(
        hflm_evaluator, live, model_dir, tmp_path, monkeypatch):
    """With --mc_scorer hflm, bit for bit; the context-once default equals it to float tolerance (next test)."""
    jglue_evaluator = hflm_evaluator
    our_calls = record_model_calls(monkeypatch)
    ours = jglue_evaluator.score(*live)

    cli, samples = run_lm_eval_cli(model_dir, LOCAL_TASKS, jglue_evaluator.work_dir, LIMIT, 4, tmp_path / "cli")
    theirs = {}
    for run in jglue_evaluator.runs:
        assert cli["n-samples"][run.lm_name]["effective"] == LIMIT
        assert cli["n-shot"][run.lm_name] == run.num_fewshot > 0  # the tasks' own few-shot (3, 3, 2)
        theirs[run.name] = cli["results"][run.lm_name][run.result_key]
    assert ours.details == theirs
    assert {run.result_key for run in jglue_evaluator.runs} == {"acc,none", "exact_match,whitespaces"}
    assert ours.value == pytest.approx(sum(theirs.values()) / 3, abs=1e-12)
    # the same prompts (few-shot examples included), and bit-identical log-likelihoods and generations
    assert len(our_calls) == 4 * 5 + 4 * 3 + 4
    assert our_calls == model_calls_of_cli(samples)


def test_the_context_once_default_gives_the_scores_and_per_document_results_of_hflm(
        jglue_evaluator, hflm_evaluator, live, monkeypatch):
    assert jglue_evaluator.settings.mc_scorer == "context_once"  # the default, from the flag table
    assert type(jglue_evaluator.lm_for(*live)).__name__.startswith("ContextOnce")
    assert not type(hflm_evaluator.lm_for(*live)).__name__.startswith("ContextOnce")
    hflm_calls = record_model_calls(monkeypatch)
    expected = hflm_evaluator.score(*live), hflm_evaluator.holdout(*live)
    expected_calls = dict(hflm_calls)
    hflm_calls.clear()
    actual = jglue_evaluator.score(*live), jglue_evaluator.holdout(*live)
    for want, got in zip(expected, actual, strict=True):
        # accuracy and exact match per task, and each document's value for the verdict: identical
        assert got.details == want.details and got.item_values == want.item_values and got.value == want.value
    # every multiple-choice request's log-likelihood, to float tolerance; generations (JSQuAD) identical
    assert hflm_calls.keys() == expected_calls.keys() and len(hflm_calls) > 20
    for call, value in expected_calls.items():
        assert hflm_calls[call] == (pytest.approx(value, abs=1e-4) if isinstance(value, float) else value), call


def test_a_bad_mc_scorer_is_one_line_naming_the_flag_value_and_choices():
    error = usage_error(mc_scorer="fast")
    assert error.flag == "--mc_scorer" and "'fast'" in str(error) and "context_once, hflm" in str(error)
    assert jglue_settings_from_args(flags(mc_scorer="HFLM")).mc_scorer == "hflm"


def test_generated_tasks_keep_the_ja_leaderboard_prompts_and_convert_official_rows(jglue_evaluator):
    by_name = {run.lm_name: run.task for run in jglue_evaluator.runs}
    jnli = by_name["jglue_local_jnli"]
    doc = jnli.eval_docs[0]  # validation rows are reversed: the last official row comes first
    assert doc["label"] == 2 and jnli.doc_to_choice(doc)[doc["label"]] == "中立"
    assert "前提：猫が窓の外を見ている。" in jnli.doc_to_text(doc)
    squad = by_name["jglue_local_jsquad"]
    assert len(squad.eval_docs) == 6  # 5 articles, 6 questions, flattened
    first = squad.eval_docs[0]
    assert first["answers"] == {"text": ["たこ焼き"], "answer_start": [first["context"].find("たこ焼き")]}
    assert "文脈：大阪はたこ焼きで有名な町である。" in squad.doc_to_text(first)  # title [SEP] dropped, as on the hub
    jcqa = by_name["jglue_local_jcommonsenseqa"]
    assert jcqa.doc_to_choice(jcqa.eval_docs[0]) == ["焼魚", "小石", "和紙", "砂利", "鉄板"]
    for run in jglue_evaluator.runs:
        original = ja_leaderboard_dir() / f"{run.lm_name.replace('jglue_local_', 'ja_leaderboard_')}.yaml"
        assert f'include: "{original}"' in (jglue_evaluator.work_dir / f"{run.lm_name}.yaml").read_text("utf-8")


# -------------------------------------------------------------------------------- repeated calls, holdout

def test_scoring_twice_gives_the_same_result(jglue_evaluator, live):
    first = jglue_evaluator.score(*live)
    second = jglue_evaluator.score(*live)
    assert first == second
    assert isinstance(first, Score) and set(first.details) == set(JGLUE_TASKS.split(","))


def test_a_trial_prints_nothing_from_lm_eval(jglue_evaluator, live, capfd, caplog):
    jglue_evaluator.score(*live)  # warm
    capfd.readouterr()
    with caplog.at_level(logging.INFO):
        jglue_evaluator.score(*live)
    assert capfd.readouterr().err == ""  # no progress bars
    assert [r for r in caplog.records if r.name.startswith("lm_eval")] == []


def test_the_wrapper_holds_the_live_model_without_copying_it(jglue_evaluator, live):
    model, tokenizer = live
    lm = jglue_evaluator.lm_for(model, tokenizer)
    assert lm.model is model and lm.tokenizer is tokenizer


def test_scores_follow_the_live_model_when_it_is_modified_in_place(jglue_evaluator, live):
    model, tokenizer = live
    before = jglue_evaluator.score(model, tokenizer)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            torch.manual_seed(1)
            for name, param in model.named_parameters():
                if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):  # keeps make_model's EOS
                    param.add_(torch.randn_like(param))
        changed = jglue_evaluator.score(model, tokenizer)
    finally:
        model.load_state_dict(saved)
    assert changed.details != before.details
    assert jglue_evaluator.score(model, tokenizer) == before


def test_holdout_scores_documents_disjoint_from_the_search_documents(jglue_evaluator, live, monkeypatch):
    import lm_eval.evaluator

    seen: list[dict[str, list[int]]] = []
    real = lm_eval.evaluator.evaluate

    def spy(**kwargs):
        seen.append({k: list(v) for k, v in kwargs["samples"].items()})
        return real(**kwargs)

    monkeypatch.setattr(lm_eval.evaluator, "evaluate", spy)
    jglue_evaluator.score(*live)
    search = {k: v for call in seen for k, v in call.items()}
    seen.clear()
    held = jglue_evaluator.holdout(*live)
    holdout = {k: v for call in seen for k, v in call.items()}

    assert search == {name: [0, 1, 2, 3] for name in LOCAL_TASKS}
    assert holdout == {name: [4, 5] for name in LOCAL_TASKS}  # 6 documents: [limit, limit + 2)
    assert held is not None and set(held.details) == set(JGLUE_TASKS.split(","))


def test_holdout_is_clipped_to_the_available_documents_and_none_without_holdout(jglue_dir, tmp_path, live, caplog):
    clipped = JGLUEEvaluator(jglue_settings_from_args(flags(jglue_tasks="jnli-1.3-0.2", jglue_data_dir=str(jglue_dir),
                                                            jglue_limit="5", jglue_holdout_limit="10")), tmp_path / "a")
    assert clipped.runs[0].holdout_docs == [5]
    assert "holdout clipped to 1 of 10" in caplog.text
    none = JGLUEEvaluator(jglue_settings_from_args(flags(jglue_tasks="jnli-1.3-0.2", jglue_data_dir=str(jglue_dir),
                                                         jglue_limit="3")), tmp_path / "b")
    assert none.holdout(*live) is None


# --------------------------------------------------------------------------------------------- user tasks

def test_user_tasks_from_the_search_path_score_with_their_weights(user_tasks, live, tmp_path):
    settings = jglue_settings_from_args(flags(jglue_tasks="my_task:0.6,other:0.4", task_search_path=str(user_tasks),
                                              jglue_limit="5", batch_size="4"))
    assert settings.lm_eval_tasks == ["my_task", "other"] and settings.weights == [0.6, 0.4]
    evaluator = JGLUEEvaluator(settings, tmp_path / "work")
    assert [(r.metric, r.result_key) for r in evaluator.runs] == [("acc", "acc,none"), ("gold_prob", "gold_prob,none")]

    score = evaluator.score(*live)
    acc, gold_prob = score.details["my_task"], score.details["other"]
    assert acc in {i / 5 for i in range(6)}
    assert 0.0 < gold_prob < 1.0  # the custom process_results metric: continuous
    assert score.value == pytest.approx(0.6 * acc + 0.4 * gold_prob, abs=1e-12)


def test_primary_metric_prefers_acc_then_exact_match_then_the_first_listed(user_tasks):
    manager = task_manager(str(user_tasks.resolve()))
    tasks = manager.load(["my_task", "other"])["tasks"]
    assert primary_metric(tasks["my_task"]) == ("acc", "acc,none")
    assert primary_metric(tasks["other"]) == ("gold_prob", "gold_prob,none")


# ------------------------------------------------------------------------------------------------ pruning

@pytest.fixture(scope="module")
def pruning_evaluator(jglue_settings, tmp_path_factory) -> JGLUEEvaluator:
    """The same tasks with --prune --jglue_chunks 2: chunk 0 is documents [0, 2] of each task, chunk 1 [1, 3]."""
    settings = dataclasses.replace(jglue_settings, pruner="median", chunks=2)
    return JGLUEEvaluator(settings, tmp_path_factory.mktemp("pruning") / "lm_eval_tasks")


def test_a_trial_the_pruner_rejects_is_pruned_after_the_first_chunk_with_the_items_it_cost(pruning_evaluator, live):
    import optuna

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))

    def objective(trial):
        return pruning_evaluator.score(*live, trial=trial).value

    study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [0]  # reported after the first chunk, the second never ran
    assert trial.user_attrs["items_scored"] == 2 * 3  # two documents of each of the three tasks


def test_the_running_score_after_a_chunk_is_the_weighted_mean_of_every_task_on_that_chunk(
        pruning_evaluator, jglue_settings, live, tmp_path):
    import optuna

    study = optuna.create_study(direction="maximize")  # the default MedianPruner never prunes the first trial
    trial = study.ask()
    full = pruning_evaluator.score(*live, trial=trial)
    assert full.items_scored == LIMIT * 3
    assert list(study.trials[0].intermediate_values) == [0]  # none after the last chunk: the trial is done

    # The first chunk scored on its own by the plain path: lm-eval's own aggregate of documents 0 and 2.
    first_chunk = JGLUEEvaluator(jglue_settings, tmp_path / "first_chunk")
    for run in first_chunk.runs:
        run.search_docs = [0, 2]
    expected = first_chunk.score(*live)
    assert study.trials[0].intermediate_values[0] == pytest.approx(expected.value, abs=1e-12)


def test_a_baseline_trial_is_never_pruned(pruning_evaluator, live):
    import optuna

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    study.enqueue_trial({}, user_attrs={"baseline": "w=1 (plain task vector)"})
    study.optimize(lambda trial: pruning_evaluator.score(*live, trial=trial).value, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE


def test_item_values_average_to_the_score_so_the_verdict_pairs_documents(jglue_evaluator, live, user_tasks, tmp_path):
    held = jglue_evaluator.holdout(*live)
    assert len(held.item_values) == 2 * 3
    assert sum(held.item_values.values()) / len(held.item_values) == pytest.approx(held.value, abs=1e-12)
    weighted = JGLUEEvaluator(jglue_settings_from_args(flags(jglue_tasks="my_task:0.6,other:0.4", jglue_limit="5",
                                                             task_search_path=str(user_tasks))), tmp_path / "w")
    score = weighted.score(*live)
    assert sum(score.item_values.values()) / len(score.item_values) == pytest.approx(score.value, abs=1e-12)


# -------------------------------------------------------------------------------------------- bad inputs

def usage_error(**values) -> UsageError:
    with pytest.raises(UsageError) as caught:
        jglue_settings_from_args(flags(**values))
    return caught.value


def test_a_limit_count_that_does_not_match_the_tasks_names_the_flag():
    error = usage_error(jglue_limit="10,20")
    assert error.flag == "--jglue_limit" and "2 values" in str(error) and "3 tasks" in str(error)


def test_a_single_limit_applies_to_every_task():
    settings = jglue_settings_from_args(flags(jglue_tasks="jnli-1.3-0.2,jcommonsenseqa-1.1-0.3:2", jglue_limit="7"))
    assert settings.limits == [7, 7] and settings.weights == pytest.approx([1 / 3, 2 / 3])


def test_the_original_default_limit_is_500_per_task():
    assert jglue_settings_from_args(flags()).limits == [DEFAULT_LIMIT] * 3 == [500] * 3


@pytest.mark.parametrize("value", ["10,x,5", "1.5", "-3", "0", "10,,5"])
def test_non_integer_negative_or_zero_limits_are_refused(value):
    error = usage_error(jglue_limit=value)
    assert error.flag == "--jglue_limit" and value in str(error)


def test_few_shot_and_holdout_counts_are_checked_like_limits():
    assert usage_error(jglue_num_fewshot="3,3").flag == "--jglue_num_fewshot"
    assert usage_error(jglue_holdout_limit="1,2").flag == "--jglue_holdout_limit"
    assert usage_error(jglue_holdout_limit="-1").flag == "--jglue_holdout_limit"
    assert jglue_settings_from_args(flags(jglue_num_fewshot="3,default,0")).num_fewshot == [3, None, 0]


def test_an_unknown_task_suggests_close_names():
    error = usage_error(jglue_tasks="jcommonsenseq-1.1-0.3,jnli-1.3-0.2")
    assert error.flag == "--jglue_tasks"
    assert "'jcommonsenseq-1.1-0.3'" in str(error) and "did you mean jcommonsenseqa-1.1-0.3" in str(error)
    assert "ja_leaderboard_jcommonsenseqa" in str(error)


@pytest.mark.parametrize("tasks,fragment", [
    ("jnli-1.3-0.2:abc", "bad weight 'abc'"), ("jnli-1.3-0.2:0", "bad weight '0'"),
    ("jnli-1.3-0.2:-1", "bad weight '-1'"), ("jnli-1.3-0.2:nan", "bad weight 'nan'"),
    ("jnli-1.3-0.2,jnli-1.3-0.2", "listed twice"), ("jnli-1.3-0.2,ja_leaderboard_jnli", "both run lm-eval task"),
    ("jnli-1.3-0.2,,jsquad-1.1-0.2", "empty entry"), ("", "no task given"),
    ("japanese_leaderboard", "is an lm-eval group"),
])
def test_bad_task_lists_are_refused_with_the_flag(tasks, fragment):
    error = usage_error(jglue_tasks=tasks)
    assert error.flag == "--jglue_tasks" and fragment in str(error)


def test_a_data_dir_missing_a_file_names_the_file(jglue_dir, tmp_path):
    broken = tmp_path / "JGLUE"
    write_jglue_copy(broken)
    (broken / "datasets/jnli-v1.3/valid-v1.3.json").unlink()
    error = usage_error(jglue_data_dir=str(broken))
    assert error.flag == "--jglue_data_dir" and "datasets/jnli-v1.3/valid-v1.3.json" in str(error)
    assert "jnli-1.3-0.2" in str(error)


def test_marc_ja_with_a_data_dir_that_lacks_it_explains_why(jglue_dir):
    error = usage_error(jglue_tasks="marc_ja-1.1-0.2", jglue_data_dir=str(jglue_dir))
    assert error.flag == "--jglue_data_dir" and "datasets/marc_ja-v1.1/train-v1.1.json" in str(error)
    assert "does not ship MARC-ja" in str(error)


def test_marc_ja_files_as_jglue_s_script_writes_them_load_with_the_hub_s_label_order(tmp_path):
    root = tmp_path / "JGLUE"
    reviews = [{"sentence": "とても良い商品でした。", "label": "positive", "review_id": "r1"},
               {"sentence": "すぐに壊れました。", "label": "negative", "review_id": "r2"}]
    write_jsonl(root / "datasets/marc_ja-v1.1/train-v1.0.json", reviews)
    write_jsonl(root / "datasets/marc_ja-v1.1/valid-v1.0.json", reviews[::-1])
    settings = jglue_settings_from_args(flags(jglue_tasks="marc_ja-1.1-0.2", jglue_data_dir=str(root)))
    (run,) = JGLUEEvaluator(settings, tmp_path / "work").runs
    docs = run.task.eval_docs
    assert [run.task.doc_to_choice(d)[d["label"]] for d in docs] == ["ネガティブ", "ポジティブ"]
    assert run.num_fewshot == 3 and run.search_docs == [0, 1]


def test_a_data_dir_or_task_search_path_that_is_not_a_directory_is_refused(tmp_path):
    assert usage_error(jglue_data_dir=str(tmp_path / "nope")).flag == "--jglue_data_dir"
    file = tmp_path / "file.yaml"
    file.write_text("task: x\n")
    error = usage_error(task_search_path=str(file))
    assert error.flag == "--task_search_path" and "not a directory" in str(error)


@pytest.mark.parametrize("value", ["0", "-2", "big", "auto:"])
def test_bad_batch_sizes_are_refused(value):
    assert usage_error(batch_size=value).flag == "--batch_size"


def test_batch_size_accepts_integers_and_auto():
    assert jglue_settings_from_args(flags(batch_size="8")).batch_size == 8
    assert jglue_settings_from_args(flags(batch_size="auto")).batch_size == "auto"


def test_generated_task_yamls_survive_awkward_paths_and_keep_lm_eval_function_hooks(tmp_path):
    from lm_eval.tasks._yaml_loader import load_yaml

    from task_vector_opt.evaluation.lm_eval_tasks import jglue_local_hooks

    squad = next(f for f in TASK_FAMILIES if f.stem == "jsquad")
    awkward = tmp_path / "日本語 #1: 'quoted' \"data\" {x}" / "a-very-long-folder-name-that-passes-eighty-columns-easily"
    files = {"train": awkward / "train-v1.1.json", "validation": awkward / "valid-v1.1.json"}
    out = tmp_path / "tasks"
    (path,) = write_local_tasks(out, [LocalTaskFiles("jglue_local_jsquad", squad, "jsquad-v1.1", files)],
                                str(awkward)).values()
    config = load_yaml(path, resolve_func=True, recursive=False)
    assert config["dataset_kwargs"] == {"data_files": {k: str(v) for k, v in files.items()}, "field": "data"}
    assert config["include"] == str(ja_leaderboard_dir() / "ja_leaderboard_jsquad.yaml")
    assert config["task"] == "jglue_local_jsquad" and config["dataset_name"] is None
    hook = config["process_docs"]  # resolved by lm-eval's loader to the copy beside the YAML
    assert callable(hook) and hook.__name__ == "jsquad_docs"
    assert (out / "jglue_local_hooks.py").read_bytes() == Path(jglue_local_hooks.__file__).read_bytes()


# -------------------------------------------------------------------------------------------- name table

@pytest.mark.parametrize("name,lm_eval_task", [
    ("jcommonsenseqa-1.1-0.3", "ja_leaderboard_jcommonsenseqa"),
    ("jcommonsenseqa-1.1-0.2", "ja_leaderboard_jcommonsenseqa"),
    ("marc_ja-1.1-0.2", "ja_leaderboard_marc_ja"), ("jnli-1.3-0.2", "ja_leaderboard_jnli"),
    ("jnli-1.1-0.6", "ja_leaderboard_jnli"), ("jsquad-1.1-0.2", "ja_leaderboard_jsquad"),
    ("jsquad-1.2-0.3", "ja_leaderboard_jsquad"), ("jaqket_v2-0.2-0.2", "ja_leaderboard_jaqket_v2"),
    ("xwinograd_ja", "ja_leaderboard_xwinograd"), ("mgsm", "ja_leaderboard_mgsm"),
    ("mgsm-1.0-0.6", "ja_leaderboard_mgsm"), ("xlsum_ja", "ja_leaderboard_xlsum"),
    ("ja_leaderboard_jsquad", "ja_leaderboard_jsquad"), ("jnli", "ja_leaderboard_jnli"),
])
def test_original_names_map_to_the_closest_lm_eval_task(name, lm_eval_task):
    (resolved,) = resolve_tasks(parse_task_list(name))
    assert resolved.name == name and resolved.lm_eval_task == lm_eval_task


def test_every_table_row_names_an_lm_eval_task_and_a_data_dir_swaps_in_the_local_twins(jglue_dir):
    for family in TASK_FAMILIES:
        assert (ja_leaderboard_dir() / f"{family.lm_eval_task}.yaml").is_file()
    settings = jglue_settings_from_args(flags(jglue_tasks="jcommonsenseqa-1.1-0.3,ja_leaderboard_jnli,mgsm",
                                              jglue_data_dir=str(jglue_dir)))
    assert settings.tasks == ["jcommonsenseqa-1.1-0.3", "ja_leaderboard_jnli", "mgsm"]  # display names kept
    assert settings.lm_eval_tasks == ["jglue_local_jcommonsenseqa", "jglue_local_jnli", "ja_leaderboard_mgsm"]


def test_settings_are_plain_json_data(jglue_settings):
    data = json.loads(json.dumps(asdict(jglue_settings)))
    assert data["lm_eval_tasks"] == LOCAL_TASKS and data["batch_size"] == 4 and data["num_fewshot"] == [None] * 3


def test_settings_and_evaluator_open_no_network_connection(jglue_dir, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    task_manager.cache_clear()  # index again, under the guard
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    settings = jglue_settings_from_args(flags(jglue_tasks="jnli-1.3-0.2", jglue_data_dir=str(jglue_dir)))
    evaluator = JGLUEEvaluator(settings, tmp_path / "work")
    assert evaluator.describe().startswith("lm-eval: jnli-1.3-0.2 -> jglue_local_jnli (acc, 6 docs, 3-shot")
