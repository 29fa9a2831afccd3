"""The GPU checks of --generation_backend vllm (run by benchmarks/gpu_check.sh; needs a CUDA GPU and vllm).

Stages (each its own process, so that two vLLM engines never share one):
  push   SmolLM2-135M-Instruct (the demo's model) as target, a synthetic task vector (tuned = target + noise),
         the repo's example bench, greedy. Check 1a: after pushing merge A, then B, then A again, the answers
         equal those of the first A. Saves merge A to disk for the fresh engine, and the hf answers of A.
         Check 2: seconds per trial (merge + answers), hf vs vllm, FastChat's temperatures.
         Check 3: push seconds and tensors per trial (every layer changed; one layer changed).
  fresh  Check 1b: a fresh vLLM engine that loads merge A from disk answers as the pushed engine did.
  report prints the three checks.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from task_vector_opt.evaluation.bench.files import load_questions  # noqa: E402
from task_vector_opt.evaluation.generation import AnswerGenerator  # noqa: E402
from task_vector_opt.evaluation.vllm_backend import VLLMAnswerGenerator, VLLMEngine  # noqa: E402

QUESTIONS = ROOT / "FastChat/fastchat/llm_judge/data/example/question.jsonl"
MAX_NEW_TOKENS = 128
UTILIZATION = 0.4


def make_models(out: Path) -> dict[str, Path]:
    """target = SmolLM2 (bfloat16), base = target, tuned = target + noise of 1% of each tensor's scale."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from task_vector_opt.demo.smollm2 import prepare_smollm2

    source = prepare_smollm2(ROOT / ".cache" / "demo")
    paths = {name: out / "models" / name for name in ("target", "tuned")}
    if not all((p / "config.json").is_file() for p in paths.values()):
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
        tokenizer = AutoTokenizer.from_pretrained(source)
        model.save_pretrained(paths["target"])
        tokenizer.save_pretrained(paths["target"])
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for param in model.parameters():
                noise = torch.randn(param.shape, generator=generator) * param.float().std() * 0.01
                param.add_(noise.to(param.dtype))
        model.save_pretrained(paths["tuned"])
        tokenizer.save_pretrained(paths["tuned"])
    return {"target": paths["target"], "base": paths["target"], "tuned": paths["tuned"]}


def push_stage(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from task_vector_opt.merging.grouping import group_names
    from task_vector_opt.merging.merger import Merger
    from task_vector_opt.merging.task_vector import build_task_vector

    paths = make_models(out)
    model = AutoModelForCausalLM.from_pretrained(paths["target"], dtype=torch.bfloat16).to("cuda").eval()
    tokenizer = AutoTokenizer.from_pretrained(paths["target"])
    vector = build_task_vector(model, paths["base"], paths["tuned"], dtype=torch.bfloat16, store_device="cuda")
    merger = Merger(model, vector, group_names(list(vector), "layer"), "cuda")
    names = merger.weight_names()
    rng = random.Random(0)
    merge_a = {n: rng.uniform(0.0, 2.0) for n in names}
    merge_b = {n: rng.uniform(0.0, 2.0) for n in names}
    questions = load_questions(QUESTIONS)
    engine = VLLMEngine(UTILIZATION)
    engine.follow(merger)
    greedy = VLLMAnswerGenerator(tokenizer, engine, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    results: dict = {"questions": len(questions), "gpu": torch.cuda.get_device_name()}

    merger.apply(merge_a)
    first_a = greedy.generate(model, questions)
    merger.apply(merge_b)
    greedy.generate(model, questions)
    merger.apply(merge_a)
    again_a = greedy.generate(model, questions)
    results["check1a_same_after_push"] = first_a == again_a
    hf_greedy = AnswerGenerator(tokenizer, max_new_tokens=MAX_NEW_TOKENS, batch_size=16, temperature=0.0,
                                progress=False)
    hf_a = hf_greedy.generate(model, questions)
    results["hf_vs_vllm_greedy_turns_equal"] = sum(a == b for qa, qb in zip(hf_a, first_a) for a, b in zip(qa, qb))
    results["turns"] = sum(len(q) for q in first_a)
    (out / "answers_pushed.json").write_text(json.dumps(first_a, ensure_ascii=False))
    model.save_pretrained(out / "merged_a")  # merge A is live: the fresh engine loads it from disk
    tokenizer.save_pretrained(out / "merged_a")

    # Check 2 and 3: trials as the search runs them (new weights, answers with FastChat's temperatures)
    hf = AnswerGenerator(tokenizer, max_new_tokens=MAX_NEW_TOKENS, batch_size=16, progress=False)
    vllm = VLLMAnswerGenerator(tokenizer, engine, max_new_tokens=MAX_NEW_TOKENS)
    timings: dict[str, list[float]] = {"hf": [], "vllm": []}
    pushes: list[dict] = []
    for trial in range(4):
        weights = {n: rng.uniform(0.0, 2.0) for n in names}
        for backend, generator in (("hf", hf), ("vllm", vllm)):
            merger.apply({n: 0.0 for n in names})
            if backend == "vllm":
                vllm.generate(model, questions[:1])  # the engine follows the restore outside the timing
            torch.cuda.synchronize()
            started = time.perf_counter()
            merger.apply(weights)
            generator.generate(model, questions)
            torch.cuda.synchronize()
            timings[backend].append(time.perf_counter() - started)
            if backend == "vllm":
                pushes.append({"tensors": engine.stats.tensors, "seconds": round(engine.stats.seconds, 4)})
    # one layer changed from the previous trial: what a late CMA-ES / TPE step often does
    merger.apply({**weights, names[1]: weights[names[1]] + 0.1})
    vllm.generate(model, questions[:1])
    pushes.append({"tensors": engine.stats.tensors, "seconds": round(engine.stats.seconds, 4)})
    results["seconds_per_trial"] = {k: [round(v, 2) for v in vs] for k, vs in timings.items()}
    results["push_per_trial"] = pushes
    (out / "push_stage.json").write_text(json.dumps(results, indent=2))


def fresh_stage(out: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig
    from vllm import LLM

    class FreshEngine(VLLMEngine):
        """A vLLM engine that loaded merge A from disk: nothing to start or push."""

        def ensure_started(self, model, processor) -> None:
            pass

        def sync(self) -> int:
            return 0

    tokenizer = AutoTokenizer.from_pretrained(out / "merged_a")
    engine = FreshEngine(UTILIZATION)
    engine.llm = LLM(model=str(out / "merged_a"), dtype="bfloat16", gpu_memory_utilization=UTILIZATION, seed=0)
    # the stop tokens come from the generation config, as they did for the live model
    model = type("Model", (), {"generation_config": GenerationConfig.from_pretrained(out / "merged_a")})()
    answers = VLLMAnswerGenerator(tokenizer, engine, max_new_tokens=MAX_NEW_TOKENS,
                                  temperature=0.0).generate(model, load_questions(QUESTIONS))
    pushed = json.loads((out / "answers_pushed.json").read_text())
    (out / "fresh_stage.json").write_text(json.dumps({"check1b_fresh_equals_pushed": answers == pushed,
                                                      "turns_differing": sum(a != b for qa, qb in zip(answers, pushed)
                                                                             for a, b in zip(qa, qb))}, indent=2))


def report(out: Path) -> None:
    push = json.loads((out / "push_stage.json").read_text())
    fresh = json.loads((out / "fresh_stage.json").read_text())
    print(f"GPU: {push['gpu']}; SmolLM2-135M-Instruct bfloat16; {push['questions']} questions, "
          f"{MAX_NEW_TOKENS} new tokens at most")
    print(f"check 1a  same greedy answers after pushing A, B, A again: {push['check1a_same_after_push']}")
    print(f"check 1b  fresh vLLM engine on merge A (from disk) = pushed engine: {fresh['check1b_fresh_equals_pushed']} "
          f"({fresh['turns_differing']} turns differ)")
    print(f"          (hf generate vs vLLM, greedy: {push['hf_vs_vllm_greedy_turns_equal']} of {push['turns']} "
          "turns equal; kernels differ, so equality is not required)")
    print("check 2   seconds per trial (merge + answers), trial by trial:")
    for backend, values in push["seconds_per_trial"].items():
        print(f"          {backend:5s} {values}  median {statistics.median(values):.2f}")
    print("check 3   push per trial (tensors, seconds; the last trial changed one layer):")
    for trial, push_info in enumerate(push["push_per_trial"]):
        print(f"          trial {trial}: {push_info['tensors']} tensors in {push_info['seconds']:.4f}s")
    ok = push["check1a_same_after_push"] and fresh["check1b_fresh_equals_pushed"]
    print("RESULT:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("push", "fresh", "report"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "gpu_check"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    {"push": push_stage, "fresh": fresh_stage, "report": report}[args.stage](out)
