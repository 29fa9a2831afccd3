"""FastChat llm_judge data: users' files load unchanged, every bad input is a UsageError naming the
flag and the file:line, prompt choice and rendering as FastChat's single-answer grading, holdout split."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from task_vector_opt.evaluation.bench.check import check_bench
from task_vector_opt.evaluation.bench.files import (
    Question, load_judge_prompts, load_questions, load_reference_answers, need_ref_categories, temperature_table,
)
from task_vector_opt.evaluation.bench.prompts import judge_prompt_for, render_judge_prompt
from task_vector_opt.evaluation.bench.settings import BenchSettings, bench_settings_from_args, load_bench, split_holdout
from task_vector_opt.cli.flags import BENCH_FLAGS
from task_vector_opt.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "FastChat" / "fastchat" / "llm_judge" / "data"

# A user's existing FastChat files, as FastChat writes them (field names and extra fields included).
USER_QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a travel blog post.", "Rewrite it in limericks."]},
    {"question_id": 111, "category": "math", "turns": ["What is 3 * 7?", "And 3 * 8?"]},
    {"question_id": 131, "category": "reasoning", "turns": ["Which is heavier?", "Why?"],
     "reference": ["Neither.", "They weigh the same."]},
    {"question_id": 150, "category": "humanities", "turns": ["Name an epic poem."]},
]
USER_REFERENCES = [
    {"question_id": 111, "answer_id": "abc", "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["21", "24"]}],
     "tstamp": 1686286924.8},
    {"question_id": 131, "answer_id": "def", "model_id": "gpt-4",
     "choices": [{"index": 0, "turns": ["from the file", "also from the file"]}], "tstamp": 1686286925.1},
]


def user_prompt_rows() -> list[dict]:
    def row(name, template, category, system="You grade answers.", kind="single", output="[[rating]]"):
        return {"name": name, "type": kind, "system_prompt": system, "prompt_template": template,
                "description": f"a {name} prompt", "category": category, "output_format": output}

    return [
        row("pair-v2", "[Q]\n{question}\n[A]\n{answer_a}\n[B]\n{answer_b}", "general", kind="pairwise",
            output="[[A]]"),
        row("single-v1", "Rate 1-10 as [[rating]].\n[Question]\n{question}\n[Answer]\n{answer}", "general"),
        row("single-math-v1", "[Question]\n{question}\n[Reference]\n{ref_answer_1}\n[Answer]\n{answer}", "math"),
        row("single-v1-multi-turn", "{question_1}|{answer_1}|{question_2}|{answer_2}", "general"),
        row("single-math-v1-multi-turn",
            "{question_1}|{ref_answer_1}|{answer_1}|{question_2}|{ref_answer_2}|{answer_2}", "math"),
    ]


def write_jsonl(path: Path, rows: list, raw_lines: dict[int, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    for index, text in (raw_lines or {}).items():
        lines.insert(index, text)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def bench_dir(tmp_path) -> Path:
    """A FastChat data dir: judge_prompts.jsonl, mybench/question.jsonl, mybench/reference_answer/gpt-4.jsonl."""
    root = tmp_path / "data"
    write_jsonl(root / "mybench" / "question.jsonl", USER_QUESTIONS)
    write_jsonl(root / "mybench" / "reference_answer" / "gpt-4.jsonl", USER_REFERENCES)
    write_jsonl(root / "judge_prompts.jsonl", user_prompt_rows())
    return root


def check(root: Path, bench: str = "mybench", judge: Path | None = None):
    return check_bench(root, bench, judge or root / "judge_prompts.jsonl")


def raises(flag: str | None, *fragments: str):
    class Checker:
        def __enter__(self):
            self.ctx = pytest.raises(UsageError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            err = self.info.value
            assert err.flag == flag, str(err)
            assert "\n" not in str(err)
            for fragment in fragments:
                assert fragment in str(err), str(err)
            return handled

    return Checker()


# ------------------------------------------------------------------------------------------ loading

def test_users_fastchat_files_load_unchanged(bench_dir):
    bench = check(bench_dir)
    assert [q.question_id for q in bench.questions] == [81, 111, 131, 150]
    by_id = {q.question_id: q for q in bench.questions}
    assert by_id[111].reference == ["21", "24"]  # from reference_answer/gpt-4.jsonl
    assert by_id[131].reference == ["Neither.", "They weigh the same."]  # the inline field wins
    assert by_id[81].reference is None
    assert set(bench.judge_prompts) == {"pair-v2", "single-v1", "single-math-v1", "single-v1-multi-turn",
                                        "single-math-v1-multi-turn"}
    pair = bench.judge_prompts["pair-v2"]
    assert (pair.type, pair.output_format, pair.description) == ("pairwise", "[[A]]", "a pair-v2 prompt")
    refs = load_reference_answers(bench_dir / "mybench" / "reference_answer")
    assert refs == {"gpt-4": {111: ["21", "24"], 131: ["from the file", "also from the file"]}}


def test_string_ids_and_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question_id": "jp-1", "category": "stem", "turns": ["質問"]}],
                       {0: "", 1: "   "})
    assert load_questions(path) == [Question("jp-1", "stem", ["質問"], None)]


def test_shipped_example_bench_and_judge_prompts():
    bench = check_bench(DATA, "example", DATA / "judge_prompts.jsonl")
    assert len(bench.questions) >= 10 and all(len(q.turns) == 2 for q in bench.questions)
    categories = {q.category for q in bench.questions}
    assert {"writing", "roleplay", "reasoning", "math", "extraction", "stem", "humanities"} <= categories
    math = [q for q in bench.questions if q.category == "math"]
    from_file = load_reference_answers(DATA / "example" / "reference_answer")["gpt-4"]
    assert len(math) >= 2 and all(q.question_id in from_file and q.reference == from_file[q.question_id]
                                  for q in math)
    assert all(len(q.reference or []) == 2 for q in bench.questions if q.category in need_ref_categories())
    prompts = load_judge_prompts(DATA / "judge_prompts.jsonl")
    assert set(prompts) == {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"}
    for prompt in prompts.values():
        text = prompt.system_prompt + prompt.prompt_template
        assert prompt.type == "single" and prompt.output_format == "[[rating]]"
        assert "[[rating]]" in text and "[[5]]" in text and "Japanese" in text and "cut off" in text
    assert "{ref_answer_1}" in prompts["single-math-v1"].prompt_template
    assert "{ref_answer_2}" in prompts["single-math-v1-multi-turn"].prompt_template


def test_fastchat_tables_match_the_installed_module():
    from fastchat.llm_judge import common

    assert temperature_table() == common.temperature_config
    assert need_ref_categories() == set(common.NEED_REF_CATS)


# ------------------------------------------------------------------------------------- bad questions

@pytest.mark.parametrize("raw, fragment", [
    ('{"question_id": 5, "category": "stem", "turns": ["a"]', "malformed JSON"),
    ('{"question_id": 5, "category": "stem"}', "no 'turns'"),
    ('{"question_id": 5, "category": "stem", "turns": []}', "non-empty list of strings"),
    ('{"question_id": 5, "category": "stem", "turns": "just a string"}', "non-empty list of strings"),
    ('{"question_id": 5, "category": "stem", "turns": ["a", 3]}', "non-empty list of strings"),
    ('{"question_id": 5, "category": "stem", "turns": ["a", "b", "c"]}', "3 turns"),
    ('{"category": "stem", "turns": ["a"]}', "question_id"),
    ('{"question_id": 5, "turns": ["a"]}', "no category"),
    ('["a list"]', "JSON object"),
    ('{"question_id": 81, "category": "stem", "turns": ["again"]}', "duplicate question_id 81 (first on line 1)"),
])
def test_bad_question_lines_name_file_and_line(bench_dir, raw, fragment):
    path = write_jsonl(bench_dir / "mybench" / "question.jsonl", USER_QUESTIONS, {2: "", 3: raw})
    with raises("--bench_name", f"{path}:4:", fragment):
        check(bench_dir)


@pytest.mark.parametrize("question_id", ["true", "5.0", '""', "null"])
def test_question_ids_are_integers_or_non_empty_strings_never_booleans_floats_or_empty(bench_dir, question_id):
    raw = f'{{"question_id": {question_id}, "category": "stem", "turns": ["a"]}}'
    path = write_jsonl(bench_dir / "mybench" / "question.jsonl", USER_QUESTIONS, {1: raw})
    with raises("--bench_name", f"{path}:2:", "invalid question_id"):
        check(bench_dir)


def test_judge_prompt_descriptive_fields_load_as_text_whatever_their_json_type(tmp_path):
    rows = user_prompt_rows()
    rows[1].update(description=3, category=None)
    prompts = load_judge_prompts(write_jsonl(tmp_path / "judge_prompts.jsonl", rows))
    assert (prompts["single-v1"].description, prompts["single-v1"].category) == ("3", "None")


def test_bad_reference_answer_line(bench_dir):
    path = write_jsonl(bench_dir / "mybench" / "reference_answer" / "gpt-4.jsonl", USER_REFERENCES,
                       {1: '{"question_id": 111, "model_id": "gpt-4", "turns": ["21"]}'})
    with raises("--bench_dir", f"{path}:2:", "choices"):
        check(bench_dir)


@pytest.mark.parametrize("raw, fragment", [
    ("{not json", "malformed JSON"),
    ('{"name": "x", "type": "single", "system_prompt": "s"}', "prompt_template"),
    ('{"name": "single-v1", "type": "single", "system_prompt": "s", "prompt_template": "t"}', "duplicate"),
    ('{"name": "y", "type": "single", "system_prompt": "s", "prompt_template": "{oops"}', "literal braces"),
])
def test_bad_judge_prompt_lines(bench_dir, raw, fragment):
    path = write_jsonl(bench_dir / "judge_prompts.jsonl", user_prompt_rows(), {3: raw})
    with raises("--judge_file", f"{path}:4:", fragment):
        check(bench_dir)


# ------------------------------------------------------------------------------------ missing things

def test_missing_bench_dir(tmp_path):
    with raises("--bench_dir", str(tmp_path / "nowhere")):
        check_bench(tmp_path / "nowhere", "mybench", tmp_path / "judge.jsonl")


def test_missing_bench_names_the_expected_path_and_lists_benches(bench_dir):
    with raises("--bench_name", str(bench_dir / "mt_bench" / "question.jsonl"), "mybench"):
        check(bench_dir, "mt_bench")


def test_missing_question_file(bench_dir):
    (bench_dir / "mybench" / "question.jsonl").unlink()
    with raises("--bench_name", str(bench_dir / "mybench" / "question.jsonl")):
        check(bench_dir)


def test_missing_judge_file(bench_dir):
    with raises("--judge_file", str(bench_dir / "nope.jsonl")):
        check(bench_dir, judge=bench_dir / "nope.jsonl")


@pytest.mark.parametrize("dropped, fragment", [
    ("single-math-v1", "question 111"),
    ("single-math-v1-multi-turn", "turn 2"),
    ("single-v1-multi-turn", "question 81"),
    ("single-v1", "turn 1"),
])
def test_judge_file_lacking_a_needed_prompt(bench_dir, dropped, fragment):
    write_jsonl(bench_dir / "judge_prompts.jsonl", [r for r in user_prompt_rows() if r["name"] != dropped])
    with raises("--judge_file", repr(dropped), fragment):
        check(bench_dir)


def test_prompts_not_needed_may_be_missing(bench_dir):
    write_jsonl(bench_dir / "mybench" / "question.jsonl", [USER_QUESTIONS[3]])  # one turn, humanities
    write_jsonl(bench_dir / "judge_prompts.jsonl", [r for r in user_prompt_rows() if r["name"] == "single-v1"])
    assert len(check(bench_dir).questions) == 1


def test_needed_prompt_of_the_wrong_kind(bench_dir):
    rows = user_prompt_rows()
    rows[1]["output_format"] = "[[A]]"
    path = write_jsonl(bench_dir / "judge_prompts.jsonl", rows)
    with raises("--judge_file", f"{path}:2:", "output_format"):
        check(bench_dir)
    rows = user_prompt_rows()
    rows[1]["prompt_template"] = "{question} {answer} {answer_2}"
    write_jsonl(bench_dir / "judge_prompts.jsonl", rows)
    with raises("--judge_file", "{answer_2}", "turn 1"):
        check(bench_dir)


def test_reference_needed_but_missing_names_the_question(bench_dir):
    (bench_dir / "mybench" / "reference_answer" / "gpt-4.jsonl").unlink()
    with raises("--bench_name", "question 111", "reference"):
        check(bench_dir)


def test_reference_with_too_few_turns(bench_dir):
    write_jsonl(bench_dir / "mybench" / "reference_answer" / "gpt-4.jsonl",
                [{"question_id": 111, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["21"]}]}])
    with raises("--bench_name", "question 111", "2 turns, has 1"):
        check(bench_dir)


def test_reference_files_other_than_gpt4_are_used(bench_dir):
    ref_dir = bench_dir / "mybench" / "reference_answer"
    (ref_dir / "gpt-4.jsonl").rename(ref_dir / "claude-3.jsonl")
    assert check(bench_dir).questions[1].reference == ["21", "24"]


# ----------------------------------------------------------------------------- prompt choice, render

def test_prompt_choice_as_fastchat(bench_dir):
    bench = check(bench_dir)
    by_id = {q.question_id: q for q in bench.questions}
    prompts = bench.judge_prompts
    assert judge_prompt_for(by_id[81], prompts, multi_turn=False).name == "single-v1"
    assert judge_prompt_for(by_id[81], prompts, multi_turn=True).name == "single-v1-multi-turn"
    for qid in (111, 131):  # math and reasoning are in NEED_REF_CATS
        assert judge_prompt_for(by_id[qid], prompts, multi_turn=False).name == "single-math-v1"
        assert judge_prompt_for(by_id[qid], prompts, multi_turn=True).name == "single-math-v1-multi-turn"


def test_rendering_fills_fastchat_placeholders(bench_dir):
    bench = check(bench_dir)
    math = bench.questions[1]
    system, user = render_judge_prompt(judge_prompt_for(math, bench.judge_prompts, False), math, ["my 21"], math.reference)
    assert system == "You grade answers."
    assert user == "[Question]\nWhat is 3 * 7?\n[Reference]\n21\n[Answer]\nmy 21"
    _, user = render_judge_prompt(judge_prompt_for(math, bench.judge_prompts, True), math, ["a1", "a2"], math.reference)
    assert user == "What is 3 * 7?|21|a1|And 3 * 8?|24|a2"
    writing = bench.questions[0]
    _, user = render_judge_prompt(judge_prompt_for(writing, bench.judge_prompts, True), writing, ["first", "second"], None)
    assert user == "Write a travel blog post.|first|Rewrite it in limericks.|second"
    _, user = render_judge_prompt(judge_prompt_for(writing, bench.judge_prompts, False), writing, ["only {braces} kept"], None)
    assert user.endswith("[Answer]\nonly {braces} kept")


def test_shipped_prompts_render(bench_dir):
    bench = check_bench(DATA, "example", DATA / "judge_prompts.jsonl")
    for question in bench.questions:
        for multi_turn in (False, True):
            system, user = render_judge_prompt(judge_prompt_for(question, bench.judge_prompts, multi_turn), question, ["A1", "A2"])
            assert question.turns[0] in user and "A1" in user and "[[rating]]" in system + user
            if multi_turn:
                assert question.turns[1] in user and "A2" in user
            if question.category in need_ref_categories():
                assert question.reference[0] in user


# ---------------------------------------------------------------------------------------------- holdout

def many_questions() -> list[Question]:
    cats = ["writing"] * 6 + ["math"] * 4 + ["stem"] * 5 + ["roleplay"] * 1
    return [Question(i, c, [f"q{i}"]) for i, c in enumerate(cats)]


def test_holdout_split_is_deterministic_disjoint_and_stratified():
    questions = many_questions()
    search, held = split_holdout(questions, 0.25, seed=7)
    again = split_holdout(questions, 0.25, seed=7)
    assert ([q.question_id for q in search], [q.question_id for q in held]) == \
        tuple([q.question_id for q in part] for part in again)
    ids_s, ids_h = {q.question_id for q in search}, {q.question_id for q in held}
    assert not ids_s & ids_h and ids_s | ids_h == {q.question_id for q in questions}
    assert len(held) == 4
    counts = {c: sum(q.category == c for q in held) for c in ("writing", "math", "stem", "roleplay")}
    assert counts["writing"] >= 1 and counts["math"] == 1 and counts["stem"] >= 1 and counts["roleplay"] == 0
    assert [q.question_id for q in search] == sorted(q.question_id for q in search)  # input order kept
    seeds = {tuple(q.question_id for q in split_holdout(questions, 0.25, seed=s)[1]) for s in range(6)}
    assert len(seeds) > 1
    assert split_holdout(questions, 0.0) == (questions, [])


# ---------------------------------------------------------------------------------------------- settings

def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for flag in BENCH_FLAGS:
        flag.add_to(parser)
    return parser.parse_args(list(argv))


def test_default_flags_give_the_example_bench(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the defaults fall back to the package's copy (the repo's FastChat/ links to it)
    settings = bench_settings_from_args(parse())
    assert isinstance(settings, BenchSettings)
    assert (settings.bench_name, settings.max_new_tokens, settings.gen_batch_size) == ("example", 512, 8)
    assert settings.conv_template is None and settings.holdout_question_ids == []
    assert Path(settings.judge_file) == (DATA / "judge_prompts.jsonl").resolve()
    json.dumps(dataclasses.asdict(settings))
    loaded = load_bench(settings)
    assert len(loaded.search) == 10 and loaded.holdout == []


def test_holdout_fraction_settings(bench_dir):
    settings = bench_settings_from_args(parse("--bench_dir", str(bench_dir), "--bench_name", "mybench",
                                              "--judge_file", str(bench_dir / "judge_prompts.jsonl"),
                                              "--holdout_fraction", "0.5"))
    assert len(settings.search_question_ids) == 2 and len(settings.holdout_question_ids) == 2
    restored = BenchSettings(**json.loads(json.dumps(dataclasses.asdict(settings))))
    loaded = load_bench(restored)
    assert [q.question_id for q in loaded.holdout] == settings.holdout_question_ids
    assert loaded.reference_for(loaded.search[0]) == loaded.search[0].reference


def test_holdout_question_file_settings(bench_dir, tmp_path):
    other = write_jsonl(tmp_path / "held" / "question.jsonl",
                        [{"question_id": 1, "category": "math", "turns": ["1+1?"], "reference": ["2"]}])
    settings = bench_settings_from_args(parse("--bench_dir", str(bench_dir), "--bench_name", "mybench",
                                              "--judge_file", str(bench_dir / "judge_prompts.jsonl"),
                                              "--holdout_question_file", str(other)))
    loaded = load_bench(settings)
    assert len(loaded.search) == 4 and [q.question_id for q in loaded.holdout] == [1]


@pytest.mark.parametrize("argv, flag, fragment", [
    (["--max_new_tokens", "0"], "--max_new_tokens", "at least 1"),
    (["--gen_batch_size", "0"], "--gen_batch_size", "at least 1"),
    (["--conv_template", "vicuna_v11"], "--conv_template", "vicuna_v1.1"),
    (["--holdout_fraction", "1.5"], "--holdout_fraction", "[0, 1)"),
    (["--holdout_fraction", "0.01"], "--holdout_fraction", "both need at least one"),
    (["--holdout_fraction", "0.2", "--holdout_question_file", "x.jsonl"], "--holdout_question_file", "not both"),
    (["--holdout_question_file", "no/such.jsonl"], "--holdout_question_file", "no/such.jsonl"),
    (["--bench_name", "../etc"], "--bench_name", "not a bench name"),
    (["--bench_name", "nosuch"], "--bench_name", "nosuch"),
    (["--bench_dir", "no/such/dir"], "--bench_dir", "no/such/dir"),
    (["--judge_file", "no/such.jsonl"], "--judge_file", "no/such.jsonl"),
])
def test_bad_flags(argv, flag, fragment, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with raises(flag, fragment):
        bench_settings_from_args(parse(*argv))


def test_holdout_file_with_bad_line_names_it(bench_dir, tmp_path):
    other = write_jsonl(tmp_path / "held.jsonl", [{"question_id": 1, "category": "stem", "turns": ["x"]}],
                        {1: "{broken"})
    with raises("--holdout_question_file", f"{other}:2:", "malformed JSON"):
        bench_settings_from_args(parse("--bench_dir", str(bench_dir), "--bench_name", "mybench", "--judge_file",
                                       str(bench_dir / "judge_prompts.jsonl"), "--holdout_question_file", str(other)))
