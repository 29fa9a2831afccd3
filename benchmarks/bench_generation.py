"""Batched vs one-at-a-time answer generation on SmolLM2-135M-Instruct (float32, CPU), greedy.

    python benchmarks/bench_generation.py [--max_new_tokens 64] [--batch_size 8] [--threads N]

Answers every turn of the example bench (FastChat/fastchat/llm_judge/data/example: 10 Japanese
two-turn questions) plus 6 fixed extra questions below (16 questions, 32 answer turns) twice with
task_vector_opt.evaluation.generation.AnswerGenerator: ``generate`` (left-padded batches, longest prompt first)
and ``generate_sequential`` (one question at a time, no padding, as FastChat's gen_model_answer),
interleaved chunk by chunk (batch_size questions each) so other load on the machine hits both alike.
Prints the settings, both times, the speed-up and whether every answer is identical.
The model dir comes from task_vector_opt.demo.smollm2.prepare_smollm2(.cache/demo) (built once).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from task_vector_opt.evaluation.bench.check import check_bench  # noqa: E402
from task_vector_opt.evaluation.bench.files import DEFAULT_BENCH_DIR, DEFAULT_JUDGE_FILE, Question  # noqa: E402

EXTRA = [
    Question("x1", "writing", ["春の訪れを感じる瞬間について、短いエッセイを書いてください。",
                               "そのエッセイに、読者の心に残るタイトルを三つ提案してください。"]),
    Question("x2", "roleplay", ["あなたは駅の案内係です。初めて東京に来た旅行者に、浅草への行き方を説明してください。",
                                "旅行者が「荷物が多いのですが」と言いました。案内を続けてください。"]),
    Question("x3", "stem", ["水が4℃で最も重くなる理由を説明してください。",
                            "その性質は、冬の湖に住む魚にとってどんな意味がありますか。"]),
    Question("x4", "humanities", ["俳句と短歌の違いを説明してください。",
                                  "季語を一つ選んで、それを使った俳句を作ってください。"]),
    Question("x5", "extraction", ["次の文から商品名と価格を抜き出してください：「本日はノートが120円、ボールペンが80円、消しゴムが60円です。」",
                                  "合計金額を計算して、表の形で示してください。"]),
    Question("x6", "writing", ["Write a short thank-you note to a teacher.",
                               "Now translate the note into polite Japanese."]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--model_dir", default=None, help="default: SmolLM2-135M-Instruct prepared in .cache/demo")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from task_vector_opt.demo.smollm2 import prepare_smollm2
    from task_vector_opt.evaluation.generation import AnswerGenerator

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = Path(args.model_dir) if args.model_dir else prepare_smollm2(ROOT / ".cache" / "demo")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    bench = check_bench(ROOT / DEFAULT_BENCH_DIR, "example", ROOT / DEFAULT_JUDGE_FILE)
    questions = bench.questions + EXTRA
    generator = AnswerGenerator(tokenizer, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                temperature=0.0, progress=False)
    prompt_tokens = [len(generator.prompt_ids(q, [])) for q in questions]

    print(f"model       : {model_dir.name} (float32, {model.config._attn_implementation} attention), "
          f"device {next(model.parameters()).device}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs")
    print(f"questions   : {len(questions)} ({len(bench.questions)} example bench + {len(EXTRA)} fixed), "
          f"{sum(len(q.turns) for q in questions)} answer turns; turn-1 prompts {min(prompt_tokens)}-"
          f"{max(prompt_tokens)} tokens")
    print(f"settings    : greedy, max_new_tokens {args.max_new_tokens}, batch_size {args.batch_size}")

    generator.generate(model, questions[:1])  # warm-up (allocator, kernels)
    # Interleaved: each chunk of batch_size questions is answered both ways, alternating which goes first,
    # so load from other processes on a shared machine hits both paths alike.
    load_before = os.getloadavg()[0]
    batched, sequential = [], []
    batched_s = sequential_s = 0.0
    for n, first in enumerate(range(0, len(questions), args.batch_size)):
        chunk = questions[first:first + args.batch_size]
        for path in (("batched", "sequential") if n % 2 == 0 else ("sequential", "batched")):
            start = time.perf_counter()
            if path == "batched":
                batched += generator.generate(model, chunk)
                batched_s += time.perf_counter() - start
            else:
                sequential += generator.generate_sequential(model, chunk)
                sequential_s += time.perf_counter() - start
    load_after = os.getloadavg()[0]

    tokens = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) for turns in sequential for a in turns)
    same = sum(a == b for a, b in zip(batched, sequential))
    print(f"batched     : {batched_s:8.1f} s")
    print(f"sequential  : {sequential_s:8.1f} s   (about {tokens} answer tokens)")
    print(f"speed-up    : {sequential_s / batched_s:8.2f} x")
    print(f"identical   : {'yes' if same == len(questions) else 'NO'} ({same}/{len(questions)} questions, all turns)")
    print(f"load average: {load_before:.1f} before, {load_after:.1f} after (other processes skew the times)")
    for q, a, b in zip(questions, batched, sequential):
        if a != b:
            print(f"  differs: question {q.question_id}: batched {a!r} vs sequential {b!r}")


if __name__ == "__main__":
    main()
