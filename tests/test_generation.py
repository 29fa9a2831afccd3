"""Answer generation: batching and order, two turns, greedy identity with the sequential path on
SmolLM2, reproducible per-question sampling, FastChat conversation templates."""
from __future__ import annotations

import pytest
import torch

from task_vector_opt.evaluation.batching import left_padded
from task_vector_opt.evaluation.bench.files import Question
from task_vector_opt.evaluation.generation import AnswerGenerator, PerRowSampler, row_seed, temperature_for
from smollm2_model import smollm2_dir_or_skip
from tiny_models import make_model, make_tokenizer

@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    return make_model("llama", vocab_size=len(tokenizer))


class EchoModel:
    """A stand-in LM whose answer is the number of real (unpadded) prompt tokens it was given.

    It records every batch: the decoded prompts, the attention masks and the generation settings.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.device = torch.device("cpu")
        self.training = False
        self.generation_config = type("Config", (), {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": None})()
        self.calls: list[dict] = []
        self.reply = None  # a fixed reply text instead of the prompt length

    def generate(self, input_ids, attention_mask, generation_config, logits_processor=None, tokenizer=None):
        eos = self.tokenizer.eos_token_id
        rows, prompts = [], []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            real = [t for t, m in zip(ids, mask) if m]
            prompts.append(self.tokenizer.decode(real))
            text = self.reply if self.reply is not None else str(len(real))
            rows.append(ids + self.tokenizer(text, add_special_tokens=False)["input_ids"] + [eos])
        self.calls.append({"prompts": prompts, "mask": attention_mask.clone(), "config": generation_config,
                           "sampler": logits_processor})
        width = max(len(r) for r in rows)
        return torch.tensor([r + [eos] * (width - len(r)) for r in rows])


def make_questions() -> list[Question]:
    lengths = [3, 40, 7, 22, 1, 30, 12]
    categories = ["writing", "math", "stem", "math", "roleplay", "unknown-category", "math"]
    return [Question(i + 1, cat, ["質問" * n + f" q{i + 1}", f"続き {i + 1}" * (n % 4 + 1)])
            for i, (n, cat) in enumerate(zip(lengths, categories))]


def test_temperatures_follow_fastchat():
    # FastChat's temperature_config (tests/test_bench.py checks the whole table against the imported module)
    assert [temperature_for(c) for c in ("writing", "roleplay", "math", "reasoning", "extraction", "stem")] == \
        [0.7, 0.7, 0.0, 0.0, 0.0, 0.1]
    assert temperature_for("no-such-category") == 0.7


def test_order_restored_and_batches_sorted_and_left_padded(tokenizer):
    model = EchoModel(tokenizer)
    questions = make_questions()
    generator = AnswerGenerator(tokenizer, batch_size=2, progress=False)
    answers = generator.generate(model, questions)
    for question, pair in zip(questions, answers):  # each answer is its own prompt's length: order is right
        assert len(pair) == 2
        assert pair[0] == str(len(generator.prompt_ids(question, [])))
        assert pair[1] == str(len(generator.prompt_ids(question, pair[:1])))
    assert answers == generator.generate_sequential(EchoModel(tokenizer), questions)
    for call in model.calls:
        real = call["mask"].sum(dim=1).tolist()
        assert real == sorted(real, reverse=True)  # longest prompt first
        assert len(real) <= 2
        width = call["mask"].shape[1]
        for row, n in zip(call["mask"].tolist(), real):
            assert row == [0] * (width - n) + [1] * n  # left padding
    # one temperature per batch; greedy batches carry no sampler, sampled ones do
    assert any(c["sampler"] is None for c in model.calls) and any(c["sampler"] is not None for c in model.calls)
    assert all(c["config"].do_sample is False and c["config"].max_new_tokens == 512 for c in model.calls)
    assert len(model.calls) == 2 * (2 + 1 + 2)  # per turn: 0.0 (3 math: 2 batches), 0.1 (stem), 0.7 (3: 2 batches)


def test_left_padding_puts_each_sequence_against_the_right_edge_and_masks_only_the_padding():
    # the one left-padding helper, used by answer generation and by the in-process judge
    input_ids, attention_mask = left_padded([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert input_ids.dtype == attention_mask.dtype == torch.long


def test_second_turn_prompt_holds_first_turn_and_answer(tokenizer):
    model = EchoModel(tokenizer)
    question = Question(7, "writing", ["最初の質問です", "二つ目の質問です"])
    generator = AnswerGenerator(tokenizer, progress=False)
    [[first, second]] = generator.generate(model, [question])
    turn2_prompt = model.calls[1]["prompts"][0]
    a, b, c = (turn2_prompt.index(s) for s in ("最初の質問です", first, "二つ目の質問です"))
    assert a < b < c
    assert turn2_prompt.endswith("<|assistant|>")
    assert generator.render_prompt(question, [first]) == turn2_prompt


def test_one_turn_questions_mix_with_two_turn_ones(tokenizer):
    questions = [Question("a", "stem", ["one turn only"]), Question("b", "stem", ["first", "second"])]
    answers = AnswerGenerator(tokenizer, progress=False).generate(EchoModel(tokenizer), questions)
    assert [len(a) for a in answers] == [1, 2]


def test_sampling_is_reproducible_and_independent_of_the_batch(tokenizer, tiny_model):
    questions = [Question(i, "writing", [f"今日は良い天気です {i}" * (i + 1), "明日は?"]) for i in range(4)]
    first = AnswerGenerator(tokenizer, max_new_tokens=12, batch_size=4, seed=3, progress=False)
    answers = first.generate(tiny_model, questions)
    again = AnswerGenerator(tokenizer, max_new_tokens=12, batch_size=3, seed=3, progress=False)
    assert again.generate(tiny_model, list(reversed(questions))) == list(reversed(answers))
    assert again.generate(tiny_model, questions[2:3]) == answers[2:3]  # alone: same sample as in the batch
    assert first.generate_sequential(tiny_model, questions) == answers
    other = AnswerGenerator(tokenizer, max_new_tokens=12, batch_size=4, seed=4, progress=False)
    assert other.generate(tiny_model, questions) != answers


def test_per_row_sampler_draws_each_row_from_its_own_seed():
    torch.manual_seed(0)
    scores = torch.randn(3, 50)
    picks = PerRowSampler(1.0, [11, 12, 13], "cpu")(None, scores).argmax(dim=-1)
    alone = PerRowSampler(1.0, [12], "cpu")(None, scores[1:2]).argmax(dim=-1)
    assert picks[1] == alone[0]
    out = PerRowSampler(1.0, [11, 12, 13], "cpu")(None, scores)
    assert torch.isfinite(out).sum(dim=-1).tolist() == [1, 1, 1]
    assert row_seed(0, 5, 1) == row_seed(0, "5", 1) != row_seed(0, 5, 0)


def test_greedy_matches_sequential_on_tiny_model(tokenizer, tiny_model):
    questions = make_questions()
    generator = AnswerGenerator(tokenizer, max_new_tokens=10, batch_size=3, temperature=0.0, progress=False)
    assert generator.generate(tiny_model, questions) == generator.generate_sequential(tiny_model, questions)


def test_fastchat_template_when_the_tokenizer_has_none(tiny_model):
    bare = make_tokenizer()
    bare.chat_template = None
    generator = AnswerGenerator(bare, max_new_tokens=6, batch_size=2, progress=False)
    conv = generator.format.conversation
    assert conv is not None and generator.format.add_special_tokens
    question = Question(1, "math", ["日本語の質問", "次の質問"])
    prompt = generator.render_prompt(question, ["答え"])
    assert prompt.index(conv.roles[0]) < prompt.index("日本語の質問") < prompt.index("答え") < prompt.index("次の質問")
    assert prompt.rstrip().endswith(conv.roles[1] + ":")
    answers = generator.generate(tiny_model, [question, Question(2, "math", ["短い"])])
    assert [len(a) for a in answers] == [2, 1] and all(isinstance(t, str) for a in answers for t in a)


def test_named_fastchat_template_wins_and_stop_string_cuts(tokenizer):
    generator = AnswerGenerator(tokenizer, conv_template="vicuna_v1.1", progress=False)
    assert generator.format.name == "vicuna_v1.1"
    prompt = generator.render_prompt(Question(1, "stem", ["こんにちは"]), [])
    assert "USER: こんにちは ASSISTANT:" in prompt and "<|user|>" not in prompt

    one_shot = AnswerGenerator(tokenizer, conv_template="one_shot", progress=False)
    model = EchoModel(tokenizer)
    model.reply = "答えです\n### Human: 次は"
    assert one_shot.generate(model, [Question(1, "stem", ["質問"])]) == [["答えです"]]
    assert one_shot.format.stop_strings == ["###"]


def test_model_left_in_training_mode_is_restored(tokenizer, tiny_model):
    tiny_model.train()
    try:
        AnswerGenerator(tokenizer, max_new_tokens=2, progress=False).generate(tiny_model, [Question(1, "math", ["x"])])
        assert tiny_model.training
    finally:
        tiny_model.eval()


# ---------------------------------------------------------------------------------------------- SmolLM2

@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_dir_or_skip()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def test_batched_greedy_equals_sequential_on_smollm2(smollm2):
    model, tok = smollm2
    questions = [
        Question(1, "math", ["What is 12 + 30?", "And doubled?"]),
        Question(2, "math", ["日本の首都はどこですか。一文で答えてください。",
                             "その都市の有名な場所を一つ挙げてください。"]),
        Question(3, "math", ["Name a color.", "Another one?"]),
        Question(4, "math", ["Explain in one sentence why the sky looks blue on a clear day, for a child.", "Shorter."]),
    ]
    generator = AnswerGenerator(tok, max_new_tokens=24, batch_size=4, progress=False)
    batched = generator.generate(model, questions)
    assert batched == generator.generate_sequential(model, questions)
    assert all(a.strip() for turns in batched for a in turns)
    assert "<|im_end|>" not in "".join(a for turns in batched for a in turns)
