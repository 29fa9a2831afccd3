"""The image-question evaluator: the live VLM answers a JSONL bench of (image, question) items; the score is the
mean ROUGE-L F against the reference answers (Japanese-tokenised) or the mean rating of an LLM judge.

Bench layout (``--vlm_bench_file``), one JSON object a line::

    {"id": "q1", "category": "colour", "image": "images/red_circle.png", "question": "...", "answer": "..."}

``image`` is a path relative to the bench file; ``id`` (default: the line number) and ``category`` (default:
"default") are optional. Everything is checked, images opened, before any model loads. The loop (chunks, pruning,
records under <run_dir>/records/<trial>/, the judged fraction, per-item values for the verdict, the holdout) is
evaluation.judged_bench's, shared with MT-Bench; this module answers image questions and rates the answers.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.bench.files import jsonl_records
from task_vector_opt.evaluation.bench.settings import split_holdout
from task_vector_opt.evaluation.judged_bench import JudgedBenchEvaluator, JudgedLoopSettings, RatedChunk, Rating, \
    loop_settings_from_args
from task_vector_opt.evaluation.judges.judgment import JudgeRequest
from task_vector_opt.evaluation.judges.registry import make_judge
from task_vector_opt.evaluation.judges.settings import judge_spec_from_args
from task_vector_opt.evaluation.vllm_backend import VLLMEngine
from task_vector_opt.identity import outside_identity

log = logging.getLogger(__name__)

BENCH_FLAG = "--vlm_bench_file"
METRIC_FLAG = "--vlm_metric"
METRICS = ("rouge_l", "judge")
DEFAULT_BENCH_FILE = "examples/vlm_bench/bench.jsonl"


# ------------------------------------------------------------------------------------------------ the bench

@dataclass(frozen=True)
class VLMItem:
    item_id: str
    question: str
    image: Path  # resolved against the bench file's folder
    answer: str  # the reference answer
    category: str = "default"  # split_holdout stratifies by it


def _check_image(path: Path, where: str) -> None:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise UsageError(BENCH_FLAG, f"{where}: image {str(path)!r} not found; image paths are relative to the "
                                     "bench file")
    try:
        with Image.open(path) as image:
            image.load()  # decodes it: a truncated file fails here, not in the middle of a trial
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UsageError(BENCH_FLAG, f"{where}: image {str(path)!r} cannot be read ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}); replace or remove "
                                     "the item") from None


def load_vlm_bench(path: str | Path) -> list[VLMItem]:
    """The bench's items, every field and image checked; UsageError names the file and line."""
    path = Path(path).expanduser()
    items: list[VLMItem] = []
    seen: dict[str, int] = {}
    for number, record in jsonl_records(path, BENCH_FLAG):
        where = f"{path}:{number}"
        for field_name in ("question", "answer", "image"):
            value = record.get(field_name)
            if not isinstance(value, str) or not value.strip():
                raise UsageError(BENCH_FLAG, f"{where}: the item has no {field_name!r} (a non-empty string); every "
                                             "item needs question, image and answer")
        item_id = str(record.get("id", number))
        if item_id in seen:
            raise UsageError(BENCH_FLAG, f"{where}: id {item_id!r} repeats line {seen[item_id]}; ids must be unique")
        seen[item_id] = number
        image = (path.parent / record["image"]).resolve()
        _check_image(image, where)
        items.append(VLMItem(item_id, record["question"], image, record["answer"],
                             str(record.get("category") or "default")))
    if not items:
        raise UsageError(BENCH_FLAG, f"{path}: no items; add JSON lines with question, image and answer")
    return items


# ------------------------------------------------------------------------------------------------ settings

@dataclass(kw_only=True)
class VLMBenchSettings(JudgedLoopSettings):
    bench_file: str
    metric: str  # rouge_l | judge
    max_new_tokens: int
    gen_batch_size: int = outside_identity()  # batching changes the speed, not greedy answers
    holdout_fraction: float = 0.0
    judge: Any = None  # a JudgeSpec with --vlm_metric judge, else None (the judge flags then change nothing)


def vlm_bench_settings_from_args(args: argparse.Namespace) -> VLMBenchSettings:
    """Validate the bench flags and the bench file (items, images) before any model loads."""
    if args.vlm_metric not in METRICS:
        raise UsageError(METRIC_FLAG, f"{args.vlm_metric!r} is not a metric; choose rouge_l or judge")
    for flag, value in (("--max_new_tokens", args.max_new_tokens), ("--gen_batch_size", args.gen_batch_size)):
        if value < 1:
            raise UsageError(flag, f"must be at least 1 (got {value})")
    loop = loop_settings_from_args(args)
    if not 0.0 <= args.holdout_fraction < 1.0:
        raise UsageError("--holdout_fraction", f"must be in [0, 1) (got {args.holdout_fraction})")
    judge = None
    if args.vlm_metric == "judge":
        if not (args.judge_model_name or "").strip():
            raise UsageError(METRIC_FLAG, "'judge' needs a judge: pass --judge_model_name (e.g. gpt-4o, claude-*, "
                                          "or a model served at --judge_base_url), or use --vlm_metric rouge_l")
        judge = judge_spec_from_args(args)
    items = load_vlm_bench(args.vlm_bench_file)
    if args.holdout_fraction and round(args.holdout_fraction * len(items)) >= len(items):
        raise UsageError("--holdout_fraction", f"{args.holdout_fraction} would hold out all {len(items)} items")
    return VLMBenchSettings(bench_file=str(Path(args.vlm_bench_file).expanduser().resolve()),
                            metric=args.vlm_metric, max_new_tokens=args.max_new_tokens,
                            gen_batch_size=args.gen_batch_size, holdout_fraction=args.holdout_fraction, judge=judge,
                            **loop)


# ------------------------------------------------------------------------------------------------ ROUGE-L

# Pictographs removed before tokenising, besides every character the emoji package knows: the ranges the
# JA-VLM-Bench-In-the-Wild evaluation (Sakana AI's evomerge) strips too.
PICTOGRAPH_RANGES = ((0x1F600, 0x1F64F), (0x1F300, 0x1F5FF), (0x1F680, 0x1F6FF), (0x1F1E0, 0x1F1FF),
                     (0x2702, 0x27B0))


class JapaneseRougeL:
    """ROUGE-L F (x100) of rouge-score on MeCab words (fugashi with unidic-lite), after the published evaluation's
    normalisation: pictographs dropped, neologdn's width/repeat normalisation, whitespace collapsed."""

    def __init__(self) -> None:
        from fugashi import Tagger
        from rouge_score import rouge_scorer

        self._tagger = Tagger("-Owakati")
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=self)  # rouge-score calls .tokenize

    @staticmethod
    def normalize(text: str) -> str:
        import emoji
        import neologdn

        kept = "".join(c for c in text if not emoji.is_emoji(c)
                       and not any(low <= ord(c) <= high for low, high in PICTOGRAPH_RANGES))
        return " ".join(neologdn.normalize(kept).split())

    def tokenize(self, text: str) -> list[str]:
        return self._tagger.parse(self.normalize(text)).split()

    def score(self, reference: str, prediction: str) -> float:
        return self._scorer.score(reference, prediction)["rougeL"].fmeasure * 100


# ------------------------------------------------------------------------------------------------ judge

JUDGE_SYSTEM = (
    "You grade answers to questions about an image. You cannot see the image: the reference answer, written by a "
    "person who saw it, is the truth about the image. Judge the model's answer against it.\n"
    "- Correctness first: facts that contradict the reference (colours, counts, objects, text in the image) are "
    "serious errors, even when the answer is fluent.\n"
    "- Language: the question is in Japanese, so the answer must be natural Japanese. An answer in another "
    "language, or one that mixes in foreign words without need, gets at most 3. Do not reward a different "
    "script or politeness level than the question's as long as the Japanese is natural.\n"
    "- Relevance and brevity: it must answer what was asked; extra detail that is not in the reference and may be "
    "invented counts against it.\n"
    "Write one or two sentences of reasoning, then the rating from 1 to 10 exactly as \"Rating: [[5]]\".")
JUDGE_USER = ("[質問 / Question]\n{question}\n\n[参照回答 / Reference answer]\n{reference}\n\n"
              "[モデルの回答 / Model's answer]\n{answer}")


def judge_request(item: VLMItem, answer: str) -> JudgeRequest:
    return JudgeRequest(system=JUDGE_SYSTEM, user=JUDGE_USER.format(question=item.question, reference=item.answer,
                                                                   answer=answer))


# ------------------------------------------------------------------------------------------------ answering

class ImageAnswerer:
    """Greedy, batched answers of the live VLM, prompts built with the processor's chat template."""

    def __init__(self, processor, max_new_tokens: int, batch_size: int):
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self._images: dict[Path, Any] = {}  # decoded once per run

    def image(self, path: Path):
        from PIL import Image

        if path not in self._images:
            with Image.open(path) as image:
                self._images[path] = image.convert("RGB")
        return self._images[path]

    def prompt(self, item: VLMItem) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item.question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @torch.no_grad()
    def answer(self, model, items: Sequence[VLMItem]) -> list[str]:
        tokenizer = self.processor.tokenizer
        if tokenizer.pad_token is None:  # batches need one; the saved processor gets it too, as generation used it
            tokenizer.pad_token = tokenizer.eos_token
        device = next(model.parameters()).device
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        answers: list[str] = []
        for first in range(0, len(items), self.batch_size):
            batch = items[first:first + self.batch_size]
            inputs = self.processor(text=[self.prompt(item) for item in batch],
                                    images=[[self.image(item.image)] for item in batch],
                                    return_tensors="pt", padding=True,
                                    padding_side="left")  # new tokens then start at one column for the batch
            inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}
            output = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
            new_tokens = output[:, inputs["input_ids"].shape[1]:]
            answers.extend(text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return answers


class VLLMImageAnswerer(ImageAnswerer):
    """The same prompts and images, greedy, answered by the vLLM engine (evaluation.vllm_backend)."""

    def __init__(self, processor, max_new_tokens: int, batch_size: int, engine: VLLMEngine):
        super().__init__(processor, max_new_tokens, batch_size)
        self.engine = engine

    def answer(self, model, items: Sequence[VLMItem]) -> list[str]:
        self.engine.ensure_started(model, self.processor)
        self.engine.sync()
        prompts = [{"prompt": self.prompt(item), "multi_modal_data": {"image": self.image(item.image)}}
                   for item in items]
        params = self.engine.sampling(temperature=0.0, max_tokens=self.max_new_tokens, skip_special_tokens=True)
        decode = self.processor.tokenizer.decode
        return [decode(ids, skip_special_tokens=True).strip()
                for ids in self.engine.generate(prompts, [params] * len(prompts))]


# ------------------------------------------------------------------------------------------------ evaluator

class VLMBenchEvaluator(JudgedBenchEvaluator):
    """score(model, processor, trial): the live VLM answers the search items; ROUGE-L or judge ratings, mean."""

    def __init__(self, settings: VLMBenchSettings, run_dir: Path):
        items = load_vlm_bench(settings.bench_file)  # again: the files may have changed since parsing
        search_items, holdout_items = split_holdout(items, settings.holdout_fraction)  # type: ignore[arg-type]
        super().__init__(settings, run_dir, search_items, holdout_items)
        self.settings: VLMBenchSettings = settings
        self.rouge = JapaneseRougeL() if settings.metric == "rouge_l" else None
        self.judge = make_judge(settings.judge, probe=True) if settings.metric == "judge" else None
        self._answerer: ImageAnswerer | None = None

    def describe(self) -> str:
        how = "ROUGE-L (MeCab words)" if self.judge is None else f"judge {self.judge.name}"
        return (f"VLM bench {Path(self.settings.bench_file).name}: {len(self.search_items)} items "
                f"(+{len(self.holdout_items)} holdout), {how}")

    def answerer(self, processor) -> ImageAnswerer:
        if self._answerer is None:
            args = (processor, self.settings.max_new_tokens, self.settings.gen_batch_size)
            self._answerer = ImageAnswerer(*args) if self.vllm is None else VLLMImageAnswerer(*args, self.vllm)
        return self._answerer

    def rate_chunk(self, model, processor, items: list[VLMItem]) -> RatedChunk:
        """Answer the items' image questions, then ROUGE-L against each reference or the judge's rating."""
        answers = self.answerer(processor).answer(model, items)
        tally = None
        if self.rouge is not None:
            rated = [(self.rouge.score(item.answer, answer), None) for item, answer in zip(items, answers)]
        else:
            judgments, tally = self.judge.judge_many([judge_request(i, a) for i, a in zip(items, answers)])
            rated = [(j.rating, None if j.rating is not None else (j.error or "no rating")) for j in judgments]
        rows = [{"id": item.item_id, "category": item.category, "question": item.question, "answer": answer,
                 "reference": item.answer, "score": value, **({"excluded_reason": why} if why else {})}
                for item, answer, (value, why) in zip(items, answers, rated)]
        ratings = [Rating(item, item.item_id, value, why) for item, (value, why) in zip(items, rated)]
        return RatedChunk(ratings, {"answers.jsonl": rows}, tally)
