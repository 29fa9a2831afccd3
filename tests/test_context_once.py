"""The context-once multiple-choice scorer gives every request the (log-likelihood, is_greedy) pair of lm-eval's
HFLM, on tiny random models of each architecture the engine supports, while running each context once."""
from __future__ import annotations

import random

import pytest
import torch

from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.context_once import context_once_class, scored_window
from tiny_models import make_config, make_tokenizer

TOLERANCE = 1e-4  # float32: the two scorers add the same numbers in different orders (padding, batch shapes)
MAX_LENGTH = 64  # tokens; some contexts below are longer, so HFLM's left truncation is exercised
SLIDING_WINDOW = 8  # tokens; far shorter than the contexts, so the window matters
WORDS = ["今日は", "良い", "天気", "です", "明日", "雨", "quick", "brown", "fox", "dog", "merge", "答え", "yes", "no"]
SINGLE_TOKEN_CHOICES = ["0", "1", "2", "3", "4"]  # one token each in the tiny tokenizer (checked below)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def build_model(arch: str, vocab_size: int, sliding_window: int | None = None, tied: bool = False, seed: int = 0):
    """A tiny random model with weights large enough that choices get clearly different log-likelihoods."""
    from transformers import AutoModelForCausalLM

    config = make_config(arch, vocab_size, tied=tied)
    if sliding_window is not None:
        config.sliding_window = sliding_window
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    return model.eval()


def documents(seed: int = 0) -> list[tuple[str, list[str]]]:
    """Multiple-choice documents: contexts from 2 to 120 tokens, 2 to 5 choices of 1 to 5 words each."""
    rng = random.Random(seed)
    text = lambda n: "".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    docs = [(text(rng.randint(1, 40)), [" " + text(rng.randint(1, 5)) for _ in range(rng.randint(2, 5))])
            for _ in range(9)]
    docs.append((text(30) + "答え：", SINGLE_TOKEN_CHOICES))  # every choice one token
    docs.append((text(25), [" yes", " no" + text(3), " " + text(6)]))  # very different lengths
    return docs


def instances(docs):
    from lm_eval.api.instance import Instance

    return [Instance("loglikelihood", {}, (context, choice), i)
            for context, choices in docs for i, choice in enumerate(choices)]


def both_scorers(model, tokenizer, batch_size: int = 3, max_length: int | None = MAX_LENGTH):
    from lm_eval.models.huggingface import HFLM

    kwargs = dict(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    return HFLM(**kwargs), context_once_class(HFLM)(**kwargs)


def assert_same_answers(expected, actual):
    assert len(expected) == len(actual)
    for i, ((ll_a, greedy_a), (ll_b, greedy_b)) in enumerate(zip(expected, actual, strict=True)):
        assert isinstance(ll_b, float) and isinstance(greedy_b, bool)
        assert ll_b == pytest.approx(ll_a, abs=TOLERANCE), f"request {i}: {ll_b} vs HFLM's {ll_a}"
        assert greedy_b == greedy_a, f"request {i}: is_greedy {greedy_b} vs HFLM's {greedy_a}"


ARCHITECTURES = [
    pytest.param("llama", None, False, id="llama"),
    pytest.param("llama", None, True, id="llama-tied"),
    pytest.param("qwen2", None, False, id="qwen2"),
    pytest.param("gemma2", SLIDING_WINDOW, False, id="gemma2-sliding"),  # sliding and full layers alternate
    pytest.param("mistral", SLIDING_WINDOW, False, id="mistral-sliding"),
]


@pytest.mark.parametrize(("arch", "window", "tied"), ARCHITECTURES)
def test_every_request_gets_hflms_loglikelihood_and_greedy_flag(tokenizer, arch, window, tied):
    model = build_model(arch, len(tokenizer), window, tied)
    docs = documents()
    requests = instances(docs)
    hflm, context_once = both_scorers(model, tokenizer)
    encoded = [context_once._encode_pair(r.args[0], r.args[1]) for r in requests]
    lengths = {len(continuation) for _, continuation in encoded}
    assert 1 in lengths and max(lengths) >= 4  # single- and multi-token choices, of different lengths
    assert max(len(c) + len(k) for c, k in encoded) > MAX_LENGTH + 1  # some are truncated from the left
    assert len(docs) % 3  # the last batch is a partial one

    assert_same_answers(hflm.loglikelihood(requests, disable_tqdm=True),
                        context_once.loglikelihood(requests, disable_tqdm=True))


@pytest.mark.parametrize(("arch", "window", "tied"), ARCHITECTURES)
def test_greedy_continuations_are_flagged_greedy_as_hflm_flags_them(tokenizer, arch, window, tied):
    """Random text is never the greedy continuation; these are, token by token (scored on token ids)."""
    model = build_model(arch, len(tokenizer), window, tied)
    hflm, context_once = both_scorers(model, tokenizer, batch_size=2)
    rng = random.Random(1)
    requests = []
    for doc in range(5):
        context = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(3, 30))]
        with torch.no_grad():
            greedy = model.generate(torch.tensor([context]), attention_mask=torch.ones(1, len(context), dtype=torch.long),
                                    max_new_tokens=4, do_sample=False, pad_token_id=0)[0, len(context):].tolist()
        for n in (1, 2, 4):  # the greedy prefix (greedy), and the same with its last token changed (not greedy)
            requests.append(((None, None), context, greedy[:n]))
            requests.append(((None, None), context, greedy[:n - 1] + [(greedy[n - 1] + 1) % len(tokenizer)]))
    expected = hflm._loglikelihood_tokens(requests, disable_tqdm=True)
    assert sum(greedy for _, greedy in expected) == 15  # the test holds both kinds
    assert_same_answers(expected, context_once._loglikelihood_tokens(requests, disable_tqdm=True))


def test_each_context_runs_once_and_costs_far_fewer_positions_than_hflm(tokenizer):
    model = build_model("llama", len(tokenizer))
    docs = [(context, choices) for context, choices in documents(2) if len(choices) >= 3]
    requests = instances(docs)
    seen: list[int] = []

    def count(_module, args, kwargs):  # HFLM passes the ids positionally, the context-once scorer by name
        seen.append((args[0] if args else kwargs["input_ids"]).numel())

    handle = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        hflm, context_once = both_scorers(model, tokenizer, max_length=None)
        hflm.loglikelihood(requests, disable_tqdm=True)
        hflm_positions = sum(seen)
        seen.clear()
        context_once.loglikelihood(requests, disable_tqdm=True)
    finally:
        handle.remove()
    counts = context_once.scoring_counts
    assert counts.contexts == len(docs) and counts.requests == len(requests)
    assert counts.positions == sum(seen)  # its own count is what the model ran
    assert counts.positions < hflm_positions / 2


def test_the_sliding_window_changes_the_scores_so_the_tests_above_exercise_it(tokenizer):
    request = instances([(("".join(WORDS) * 2), [" quick brown fox"])])
    full, _ = both_scorers(build_model("mistral", len(tokenizer)), tokenizer, max_length=None)
    windowed, _ = both_scorers(build_model("mistral", len(tokenizer), SLIDING_WINDOW), tokenizer, max_length=None)
    (with_window, _), = windowed.loglikelihood(request, disable_tqdm=True)
    (without, _), = full.loglikelihood(request, disable_tqdm=True)
    assert abs(with_window - without) > 100 * TOLERANCE


def test_the_shared_context_is_the_one_hflm_conditions_on_after_truncation():
    context, choice = list(range(10)), [20, 21, 22]
    assert scored_window(context, choice, max_length=100) == (tuple(context), 3)
    # HFLM feeds (context + choice)[-(8 + 1):][:-1] = [4..9, 20, 21]; the choice's 2 first inputs are its own
    assert scored_window(context, choice, max_length=8) == ((4, 5, 6, 7, 8, 9), 3)
    assert scored_window(context, [30], max_length=8) == ((2, 3, 4, 5, 6, 7, 8, 9), 1)


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl"])
def test_vision_language_targets_score_their_text_as_hflm_does(kind, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoTokenizer
    from vlm_models import make_llava, make_qwen2_vl

    directory = (make_llava if kind == "llava" else make_qwen2_vl)(tmp_path / kind)
    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    requests = instances(documents(3)[:5])
    hflm, context_once = both_scorers(model, tokenizer)
    assert_same_answers(hflm.loglikelihood(requests, disable_tqdm=True),
                        context_once.loglikelihood(requests, disable_tqdm=True))


def test_a_model_that_is_not_a_causal_lm_is_refused_in_one_line_naming_the_flag(tokenizer):
    from lm_eval.models.huggingface import HFLM
    from transformers import T5Config, T5ForConditionalGeneration

    model = T5ForConditionalGeneration(T5Config(vocab_size=len(tokenizer), d_model=16, d_ff=32, num_layers=1,
                                                num_heads=2, d_kv=8, decoder_start_token_id=0))
    with pytest.raises(UsageError) as caught:
        context_once_class(HFLM)(pretrained=model, tokenizer=tokenizer, batch_size=2)
    assert caught.value.flag == "--mc_scorer" and "hflm" in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_mc_scorer_on_the_command_line_is_one_line_and_exit_2_before_any_model_loads(tmp_path, capsys,
                                                                                             monkeypatch):
    from task_vector_opt import engine
    from task_vector_opt.cli.pipelines import JGLUE, run_pipeline
    from task_vector_opt.merging.moe import workspace as moe_workspace
    from cli_checks import expect_usage_error, refuse_model_loads
    from tiny_models import make_trio

    models = make_trio(tmp_path / "models")
    capsys.readouterr()  # saving the models draws progress bars on stderr
    refuse_model_loads(monkeypatch, engine, moe_workspace)
    argv = ["--target_model", str(models["target"]), "--base_model", str(models["base"]), "--tuned_model",
            str(models["tuned"]), "--output_dir", str(tmp_path / "out"), "--run_dir", str(tmp_path / "run"),
            "--mc_scorer", "fast"]
    expect_usage_error(lambda a: run_pipeline(JGLUE, a), argv, capsys, "--mc_scorer", "'fast'", "context_once")
