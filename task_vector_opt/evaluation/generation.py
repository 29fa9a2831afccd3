"""Answers to bench questions from the live model: batched chat generation, FastChat-compatible.

``AnswerGenerator.generate`` answers every turn of every question, as FastChat's
``gen_model_answer`` does, but many questions at a time:

* Turn by turn: turn 2's prompt holds turn 1, the model's own first answer, then turn 2.
* Prompts come from the tokenizer's chat template; a FastChat conversation template
  (``fastchat.conversation``) is used when the tokenizer has none, or when one is named.
* The questions of one turn are grouped by sampling temperature (FastChat's per-category
  ``temperature_config``, 0.7 for unknown categories), sorted longest prompt first, cut into
  batches, LEFT-padded with an attention mask (generate derives the position ids from it,
  so a padded row sees the same positions as an unpadded one), and the answers are put back
  in question order.
* Temperature 0 is greedy decoding (``do_sample=False``). Above 0 the next token is sampled
  (temperature, then top-k 50: the sampling FastChat got from transformers' defaults), but not
  with generate's own sampler: that draws every row from one random stream, so a question's
  sample would depend on which questions share its batch. Each row is drawn instead by
  ``PerRowSampler`` with its own ``torch.Generator`` seeded from (seed, question_id, turn);
  it returns -inf everywhere but the drawn token, which generate then takes. The same seed
  gives the same answers whatever the batch size, order, or the other questions.
* Generation stops at EOS (the model's and the tokenizer's, plus a FastChat template's stop
  tokens / stop string); special tokens are stripped from the text.

``AnswerGenerator(temperature=...)`` overrides the per-category temperature (0.0: all greedy).

``generate_sequential`` is the one-question-at-a-time reference path (no padding, as FastChat's
gen_model_answer), with the same prompts and the same sampler. On SmolLM2 in float32 its greedy
answers equal the batched ones in every check we ran (tests/test_generation.py,
benchmarks/bench_generation.py). Bit-for-bit equality of the logits is not something batching
can promise, though, and the cause is not the padding: with the mask and the position ids generate
derives from it, a left-padded row's prefill logits are bitwise those of the unpadded prompt
(eager attention; SDPA's masked kernel differs by ~3e-5). Every decode step differs by up to
~1e-4 for padded and unpadded rows alike, because the CPU matmul (MKL sgemm) accumulates in a
different order for 1-3 rows (one question) than for 4+ (a batch). A greedy token flips only where
its top two logits tie to within that, which none of our checks hit.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from task_vector_opt.evaluation.batching import left_padded
from task_vector_opt.evaluation.bench.files import Question, temperature_table

log = logging.getLogger(__name__)

DEFAULT_TEMPERATURE = 0.7  # FastChat's gen_model_answer uses 0.7 for categories not in temperature_config
SAMPLING_TOP_K = 50  # transformers' default top_k, which FastChat's sampling ran with
FALLBACK_CONV_TEMPLATE = "one_shot"  # FastChat's own default when no adapter matches the model


def temperature_for(category: str) -> float:
    """FastChat's sampling temperature for a question category."""
    return float(temperature_table().get(category, DEFAULT_TEMPERATURE))


def row_seed(seed: int, question_id: Any, turn: int) -> int:
    """The sampling seed of one answer turn: depends on nothing but (seed, question_id, turn)."""
    digest = hashlib.sha256(f"{seed}\x00{question_id!s}\x00{turn}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


class PerRowSampler:
    """A logits processor that samples each batch row with its own generator (see the module doc).

    Rows keep their place through a generate call (finished rows are padded, not dropped),
    so row i is always the same question.
    """

    def __init__(self, temperature: float, seeds: Sequence[int], device: torch.device | str,
                 top_k: int = SAMPLING_TOP_K):
        if temperature <= 0:
            raise ValueError("PerRowSampler needs a temperature above 0 (0 is greedy decoding)")
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores.float() / self.temperature
        if 0 < self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        picks = torch.stack([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, picks.to(out.device), 0.0)


@dataclass
class ChatFormat:
    """How prompts are written: the tokenizer's chat template or a FastChat conversation template."""

    name: str  # "chat_template" or the FastChat template's name
    conversation: Any = None  # fastchat.conversation.Conversation (None: the tokenizer's chat template)

    @property
    def add_special_tokens(self) -> bool:
        # A chat template writes BOS itself where the model wants one; FastChat's templates leave it to the
        # tokenizer (gen_model_answer tokenizes the prompt with the tokenizer's defaults).
        return self.conversation is not None

    @property
    def stop_strings(self) -> list[str]:
        stop = getattr(self.conversation, "stop_str", None)
        if not stop:
            return []
        return [stop] if isinstance(stop, str) else [s for s in stop if s]

    @property
    def stop_token_ids(self) -> list[int]:
        return [int(t) for t in (getattr(self.conversation, "stop_token_ids", None) or [])]

    def render(self, tokenizer, turns: Sequence[str], answers: Sequence[str]) -> str:
        """The prompt asking for the answer to ``turns[len(answers)]`` after the earlier turns and answers."""
        asked = list(turns[: len(answers) + 1])
        if self.conversation is None:
            messages: list[dict[str, str]] = []
            for i, user in enumerate(asked):
                messages.append({"role": "user", "content": user})
                if i < len(answers):
                    messages.append({"role": "assistant", "content": answers[i]})
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        conv = self.conversation.copy()
        for i, user in enumerate(asked):
            conv.append_message(conv.roles[0], user)
            conv.append_message(conv.roles[1], answers[i] if i < len(answers) else None)
        return conv.get_prompt()


def chat_format_for(tokenizer, conv_template: str | None = None) -> ChatFormat:
    """A named FastChat template; else the tokenizer's chat template; else FastChat's template for the model.

    The last case follows FastChat's ``get_conversation_template(model_path)`` (its model
    adapters match the tokenizer's ``name_or_path``; ``one_shot`` when none matches).
    """
    from fastchat.conversation import get_conv_template

    if conv_template:
        return ChatFormat(conv_template, get_conv_template(conv_template))
    if getattr(tokenizer, "chat_template", None):
        return ChatFormat("chat_template")
    try:
        from fastchat.model.model_adapter import get_conversation_template

        conv = get_conversation_template(getattr(tokenizer, "name_or_path", "") or "")
    except Exception as exc:  # noqa: BLE001 - FastChat's adapters need optional packages; the default is enough
        log.debug("FastChat's model adapters are unavailable (%s); using %s", exc, FALLBACK_CONV_TEMPLATE)
        conv = get_conv_template(FALLBACK_CONV_TEMPLATE)
    log.info("the tokenizer has no chat template; using FastChat's conversation template %r", conv.name)
    return ChatFormat(conv.name, conv)


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def _model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


class AnswerGenerator:
    """Answers bench questions with a live causal LM (see the module doc)."""

    def __init__(self, tokenizer, *, max_new_tokens: int = 512, batch_size: int = 8,
                 conv_template: str | None = None, seed: int = 0, progress: bool = True,
                 temperature: float | None = None):
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be at least 1")
        if temperature is not None and temperature < 0:
            raise ValueError("temperature must be at least 0")
        self.temperature = temperature  # None: FastChat's per-category temperature; a number overrides it
        self.tokenizer = tokenizer
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.progress = progress
        self.format = chat_format_for(tokenizer, conv_template)

    def temperature_of(self, question: Question) -> float:
        return temperature_for(question.category) if self.temperature is None else float(self.temperature)

    # ------------------------------------------------------------------------------------------ prompts

    def render_prompt(self, question: Question, answers: Sequence[str]) -> str:
        """The prompt text for the turn after ``answers`` (turn 1 when ``answers`` is empty)."""
        return self.format.render(self.tokenizer, question.turns, answers)

    def prompt_ids(self, question: Question, answers: Sequence[str]) -> list[int]:
        text = self.render_prompt(question, answers)
        return list(self.tokenizer(text, add_special_tokens=self.format.add_special_tokens)["input_ids"])

    # ---------------------------------------------------------------------------------------- generation

    def generate(self, model, questions: Sequence[Question]) -> list[list[str]]:
        """Answers per question (one per turn), in the order of ``questions``; batched."""
        return self._answer(model, questions, batched=True)

    def generate_sequential(self, model, questions: Sequence[Question]) -> list[list[str]]:
        """The same answers one question at a time, without padding (FastChat's gen_model_answer loop)."""
        return self._answer(model, questions, batched=False)

    def _answer(self, model, questions: Sequence[Question], batched: bool) -> list[list[str]]:
        from tqdm.auto import tqdm

        questions = list(questions)
        answers: list[list[str]] = [[] for _ in questions]
        total = sum(len(q.turns) for q in questions)
        was_training = getattr(model, "training", False)
        if was_training:
            model.eval()
        bar = tqdm(total=total, desc="answering" if batched else "answering (sequential)", unit="turn",
                   leave=False, disable=not self.progress)
        try:
            if batched:
                for turn in range(max((len(q.turns) for q in questions), default=0)):
                    for members in self._batches(questions, answers, turn):
                        texts = self._run(model, [ids for _, ids in members],
                                          self.temperature_of(questions[members[0][0]]),
                                          [row_seed(self.seed, questions[i].question_id, turn) for i, _ in members])
                        for (i, _), text in zip(members, texts):
                            answers[i].append(text)
                        bar.update(len(members))
            else:
                for i, question in enumerate(questions):
                    for turn in range(len(question.turns)):
                        ids = self.prompt_ids(question, answers[i])
                        answers[i].append(self._run(model, [ids], self.temperature_of(question),
                                                    [row_seed(self.seed, question.question_id, turn)])[0])
                        bar.update(1)
        finally:
            bar.close()
            if was_training:
                model.train()
        return answers

    def _batches(self, questions: list[Question], answers: list[list[str]], turn: int
                 ) -> list[list[tuple[int, list[int]]]]:
        """Batches of (question index, prompt ids) for one turn: one temperature each, longest prompt first."""
        by_temperature: dict[float, list[tuple[int, list[int]]]] = {}
        for i, question in enumerate(questions):
            if len(question.turns) > turn:
                by_temperature.setdefault(self.temperature_of(question), []).append(
                    (i, self.prompt_ids(question, answers[i])))
        batches = []
        for temperature in sorted(by_temperature):
            members = sorted(by_temperature[temperature], key=lambda m: -len(m[1]))  # stable: ties keep order
            batches += [members[k:k + self.batch_size] for k in range(0, len(members), self.batch_size)]
        return batches

    def _special_ids(self, model) -> tuple[list[int], int]:
        eos = _as_list(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
        eos += _as_list(self.tokenizer.eos_token_id) + self.format.stop_token_ids
        eos = list(dict.fromkeys(eos))
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
        if pad is None:
            pad = eos[0] if eos else 0
        return eos, int(pad)

    def _run(self, model, prompts: list[list[int]], temperature: float, seeds: list[int]) -> list[str]:
        """One generate call: left-padded prompts in, decoded answers out (same order)."""
        from transformers import GenerationConfig, LogitsProcessorList

        device = _model_device(model)
        eos, pad = self._special_ids(model)
        input_ids, attention_mask = left_padded(prompts, pad)
        width = input_ids.shape[1]
        # All generation settings explicit (the model's own sampling defaults do not leak in); greedy search
        # picks the argmax, which for temperature > 0 is the token PerRowSampler drew.
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                  temperature=1.0, top_k=SAMPLING_TOP_K, top_p=1.0, eos_token_id=eos,
                                  pad_token_id=pad, stop_strings=self.format.stop_strings or None)
        extra: dict[str, Any] = {}
        if temperature > 0:
            extra["logits_processor"] = LogitsProcessorList([PerRowSampler(temperature, seeds, device)])
        if self.format.stop_strings:
            extra["tokenizer"] = self.tokenizer
        with torch.inference_mode():
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                    generation_config=config, **extra)
        return [self._decode(row[width:].tolist(), eos) for row in output]

    def _decode(self, ids: list[int], eos: list[int]) -> str:
        stops = set(eos)
        end = next((k for k, token in enumerate(ids) if token in stops), len(ids))
        text = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
        for stop in self.format.stop_strings:
            cut = text.find(stop)
            if cut >= 0:
                text = text[:cut]
        # A byte-level tokenizer cut at the token limit can leave half a character: drop it.
        return text.rstrip("\ufffd").strip()
