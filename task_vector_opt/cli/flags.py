"""Command-line flags: one table for every script, original flag names kept.

Each pipeline picks the flag groups it needs; ``parse`` turns argv into a validated
RunConfig, raising UsageError (one line, exit code 2) before anything heavy happens.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from task_vector_opt.evaluation.bench.files import DEFAULT_BENCH_DIR, DEFAULT_JUDGE_FILE
from task_vector_opt.errors import UsageError, parse_one_line, run_cli  # run_cli: the entry scripts' wrapper

DEFAULT_JGLUE_TASKS = "jcommonsenseqa-1.1-0.3,marc_ja-1.1-0.2,jnli-1.3-0.2,jsquad-1.1-0.2"


def finite_float(text: str) -> float:
    """A float flag's value: nan and inf are refused like any other bad number (float() accepts them)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a plain number like 1.5") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; give a plain number like 1.5")
    return value


@dataclass(frozen=True)
class Flag:
    name: str
    help: str
    default: Any = None
    type: Callable[[str], Any] | None = str
    choices: Sequence[str] | None = None
    action: str | None = None  # "store_true" for switches
    aliases: tuple[str, ...] = ()
    dest: str | None = None
    metavar: str | None = None
    # The value a run uses when the flag is not given, for a flag that does nothing in some runs: its parsed
    # default stays None, so validation can refuse it where it would do nothing (as --pruner without --prune)
    # only when the user gave it. --help and the flag docs show this value as the default.
    unset_default: Any = None

    def add_to(self, parser: argparse._ActionsContainer) -> None:
        kwargs: dict[str, Any] = {"help": self.help, "default": self.default}
        if self.dest:
            kwargs["dest"] = self.dest
        if self.action:
            kwargs["action"] = self.action
        else:  # every float flag is finite: declared as float in the tables, parsed by finite_float
            kwargs["type"] = finite_float if self.type is float else self.type
            if self.metavar:
                kwargs["metavar"] = self.metavar
            if self.choices:
                kwargs["choices"] = self.choices
        shown = self.default if self.unset_default is None else self.unset_default
        if shown is not None and not self.action:
            kwargs["help"] += f" (default: {shown})"
        parser.add_argument(self.name, *self.aliases, **kwargs)


from task_vector_opt.evaluation.scorers import DEFAULT_SCORER, SCORERS
from task_vector_opt.search.pruning import PRUNERS
from task_vector_opt.search.samplers import normalize_sampler_name

DTYPE_FLAG = Flag("--dtype", "Precision of the live model and the task vector.", "bfloat16",
                  choices=("bfloat16", "float16", "float32"))
MODEL_FLAGS = [
    Flag("--base_model", "Model subtracted to form the task vector (tuned - base): hub id or local dir."),
    Flag("--tuned_model", "Model the task vector is taken from (tuned - base): hub id or local dir. Several, "
         "comma-separated, give one task vector each (tuned_i - base), merged by --merge_method with a weight per "
         "vector and group."),
    Flag("--cache_dir", "Where hub downloads are cached (as in the original)."),
    DTYPE_FLAG,
    Flag("--device", "Device of the live model: cuda, cuda:N, cpu or mps (default: cuda when available, else cpu)."),
    Flag("--vector_placement", "Where the target's original tensors and the task vector are kept: 'device' (fastest), "
         "'cpu' (saves 2x model size of GPU memory), 'auto' (device when it fits, else cpu).", "auto",
         choices=("auto", "device", "cpu")),
    Flag("--skip_embed", "Do not add the task vector to embed_tokens / lm_head (as in the Chat Vector paper).",
         action="store_true", default=False),
    Flag("--trust_remote_code", "Allow models that ship their own Python code (off by default).",
         action="store_true", default=False),
    Flag("--allow_pickle", "Allow loading .bin/.pt (pickle) weights; only safetensors are loaded otherwise.",
         action="store_true", default=False),
]

# How several task vectors combine (task_vector_opt.merging.methods; checked by validation.merge_settings_from_args).
MERGE_FLAGS = [
    Flag("--merge_method", "How the task vectors combine, with mergekit's meaning: 'task_arithmetic' (target + "
         "sum w_i*tau_i), 'ties' (each tau_i trimmed to its largest-magnitude entries, a sign elected per entry, "
         "only agreeing entries added), 'dare_linear' (entries dropped at random, the rest rescaled) or 'dare_ties' "
         "(DARE drop, then the TIES sign election).", "task_arithmetic",
         choices=("task_arithmetic", "ties", "dare_linear", "dare_ties")),
    Flag("--density_min", "Lowest density searched (share of each vector's entries kept by ties / dare_*; "
         "on a 0.001 grid; not with task_arithmetic, which keeps every entry).", type=float, unset_default=0.1),
    Flag("--density_max", "Highest density searched (at most 1.0 = keep every entry; not with task_arithmetic).",
         type=float, unset_default=1.0),
    Flag("--density_per_group", "Search one density per vector and group (as the weights) instead of one per "
         "vector.", action="store_true", default=False),
    Flag("--dare_seed", "Seed of the DARE drop masks (dare_linear / dare_ties): the same weights and densities "
         "give the same merge (default: 42).", type=int),
    Flag("--dare_rescale", "How DARE rescales the kept entries: 'inverse_density' (by 1/density, the DARE paper), "
         "'l1' (back to the vector's L1 norm, as mergekit's rescale) or 'none'.", "inverse_density",
         choices=("inverse_density", "l1", "none")),
    Flag("--merge_normalize", "Divide the merged delta by the sum of the weights (ties / dare_ties: of the "
         "weights whose sign agrees per entry), as mergekit's normalize option.", action="store_true",
         default=False),
]

SEARCH_FLAGS = [
    Flag("--optimize_mode", "Granularity of the weights: 'auto' (default: profile, for one vector or several, "
         "every merge method and the MoE experts, with --scale_search on), 'all' (one per tensor), "
         "'layer' (one per decoder layer + embeddings, final norm, lm_head), 'parameter' (one per kind of tensor) "
         "or 'profile' (layer weights interpolated along depth from --profile_knots knot weights per vector and "
         "expert; embeddings, final norm, lm_head keep their own). Why auto is the default: docs/en/search.md.",
         "auto",
         choices=("auto", "all", "layer", "parameter", "profile")),
    Flag("--profile_knots", "Knot weights of profile mode, spread evenly from the first decoder layer to the last "
         "(1 = one weight for every layer; at most the number of layers; only in profile mode, which --optimize_mode "
         "auto uses). Default: 4, or the number of layers when the model has fewer.", None, type=int),
    Flag("--scale_search", "Find each task vector's overall scale first, then the shape: 'on' tries one uniform "
         "weight per vector on a design over the whole --weight_min..--weight_max range (6 trials with one vector, "
         "the baselines included, then 2 around the best), then a block design raises and drops one depth block at a time (2 trials "
         "per block and 1 combining them), and the sampler then searches each layer group's offset from the best scale "
         "(weight = clip(scale + offset), so any weight of the range is reachable in every group, from any scale, 0 "
         "included). A shape trial is declared best only when it beats the best scale beyond the paired 95-percent interval "
         "on the search items. 'auto' (default): on with --optimize_mode auto, off with a mode you name, "
         "so the original '--optimize_mode layer --optuna_sampler TPE' runs as it always did. "
         "Why: docs/en/search.md.", "auto", choices=("auto", "on", "off")),
    Flag("--optuna_sampler", "Optuna sampler: CMA-ES (the default; starts at w=1, plain addition, with a step of a "
         "sixth of the weight range; with --scale_search, at the best scale), TPE (the original default), random, GP (Gaussian process; needs scipy) or "
         "TPE-multivariate. Why CMA-ES is the default: docs/en/benchmarks.md, search.", "CMA-ES",
         type=normalize_sampler_name),
    Flag("--optuna_seed", "Seed for the sampler (same seed, same proposals).", 42, type=int),
    Flag("--n_trials", "Number of completed trials the study should reach (baselines included).", 30, type=int),
    Flag("--weight_min", "Lowest weight searched (negative allowed).", 0.0, type=float),
    Flag("--weight_max", "Highest weight searched.", 2.0, type=float),
    Flag("--storage", "Optuna storage URL (sqlite:///..., postgresql://..., or a journal file path ending in "
         ".log). Default: sqlite in the run directory."),
    Flag("--study_name", "Study name; default is derived from the inputs, so rerunning the same command resumes."),
    Flag("--run_dir", "Directory for the study database, logs and per-trial records (default: runs/<study_name>)."),
    Flag("--holdout_top_k", "How many of the best trials are scored on the held-out items at the end (besides w=0 "
         "and w=1), when the evaluator has a holdout.", 1, type=int),
    Flag("--no_baseline_trials", "Do not enqueue the two baseline trials (all weights 1.0, then all 0.0).",
         action="store_true", default=False),
    Flag("--heartbeat_interval", "Seconds between a worker's heartbeats in an RDB storage; a trial whose worker "
         "is silent for 3x this long is marked failed and retried.", 60.0, type=float),
    Flag("--search_only", "Run trials only, and save nothing: for the extra workers of a study shared through "
         "--storage. Save afterwards with the same command and --finalize.", action="store_true", default=False),
    Flag("--finalize", "Do not search: save the best model of the study (after its holdout), e.g. once "
         "--search_only workers are done.", action="store_true", default=False),
]

OUTPUT_FLAGS = [
    Flag("--output_dir", "Where the best model is saved.", "./model-chatvector"),
    Flag("--overwrite_output_dir", "Replace an existing non-empty --output_dir.", action="store_true", default=False),
    Flag("--save_on_interrupt", "On Ctrl-C, save the best model found so far before exiting (default: exit "
         "at once; completed trials are kept in the storage either way).", action="store_true", default=False),
    Flag("--log_level", "Logging level.", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
]

# Sharing and tracking (task_vector_opt.outputs.hub, task_vector_opt.outputs.tracking); checked by validation.check_sharing.
SHARING_FLAGS = [
    Flag("--push_to_hub", "Upload the saved model directory (weights, tokenizer, model card README.md, report) to "
         "this Hugging Face repo id at the end, e.g. your-name/my-merge (needs a token: `hf auth login` or HF_TOKEN).",
         metavar="REPO"),
    Flag("--hub_private", "Create the --push_to_hub repo as private.", action="store_true", default=False),
    Flag("--wandb", "Log every trial (score, weights, per-task metrics) to Weights & Biases (needs `pip install "
         "wandb`; project from WANDB_PROJECT, WANDB_MODE=offline logs locally).", action="store_true", default=False),
]

# Multi-fidelity, shared by every evaluator that reports running scores (task_vector_opt.search.pruning).
PRUNING_FLAGS = [
    Flag("--prune", "Let an Optuna pruner stop a trial whose running score is hopeless; a pruned trial costs only "
         "the items it scored. Baselines and the held-out scoring are never pruned.", action="store_true",
         default=False),
    Flag("--pruner", "Pruner of --prune: median, successive_halving or hyperband (default: median).",
         choices=PRUNERS),
]

JGLUE_FLAGS = [
    Flag("--jglue_tasks", "Comma-separated lm-eval tasks, optionally weighted as name:weight. Accepts ja_leaderboard_* "
         "names, the original Stability-style names (jcommonsenseqa-1.1-0.3, ...) and tasks from --task_search_path.",
         DEFAULT_JGLUE_TASKS),
    Flag("--jglue_limit", "Documents scored per task during the search: one value per task, comma-separated "
         "(a single value applies to every task). Default: 500 per task, as in the original.", None),
    Flag("--jglue_num_fewshot", "Few-shot examples per task, comma-separated (default: each task's own).", None),
    Flag("--jglue_holdout_limit", "Held-out documents per task, taken after the search documents; scored for the "
         "w=0, w=1 and best merges at the end (0 = no holdout).", "0"),
    Flag("--jglue_data_dir", "Local copy of the official JGLUE repository (datasets/jcommonsenseqa-v1.3/...) to run the "
         "JGLUE tasks without hub access."),
    Flag("--task_search_path", "Directory of your own lm-eval task YAMLs; their names can go into --jglue_tasks."),
    Flag("--search_objective", "What the search maximizes: 'task' (default: each task's own metric, as the "
         "original did), 'choice_prob' (on multiple-choice tasks, the mean probability of the right choice, from "
         "the same log-likelihoods the task's accuracy reads: it moves where accuracy is flat) or 'auto' "
         "(choice_prob for every multiple-choice task, the own metric for the others, e.g. JSQuAD). The held-out "
         "verdict always uses each task's own metric. Why task is the default: docs/en/search.md.", "task",
         choices=("auto", "choice_prob", "task")),
    Flag("--batch_size", "lm-eval batch size (an integer or 'auto').", "16"),
    Flag("--mc_scorer", "Scorer of the log-likelihood (multiple-choice) requests: 'context_once' runs each distinct "
         "context once and scores every choice after it (the same log-likelihoods, a fraction of the tokens; "
         "--batch_size then counts contexts), 'hflm' is lm-eval's HFLM, one pass per choice. Generation tasks "
         "always run through HFLM.", DEFAULT_SCORER, choices=SCORERS),
    *PRUNING_FLAGS,
    Flag("--jglue_chunks", "With --prune: chunks the search documents are scored in; each chunk takes every N-th "
         "document of every task, so the running score after an early chunk is representative.", 4, type=int),
    Flag("--item_subset", "Fraction of each task's search documents that trials score once --item_subset_after "
         "trials have scored them all (0 = every document, always). The documents are chosen from those first "
         "trials (anchor points: clusters of documents that moved alike, each weighted by its size) and a trial's "
         "score is their estimate of the full score; a trial whose estimate beats every full score so far is "
         "scored on the rest of the documents, so the best trial's score is never an estimate. The held-out "
         "verdict always scores every held-out document. Not with --prune.", 0.0, type=float),
    Flag("--item_subset_after", "With --item_subset: trials scored on every search document before the subset is "
         "chosen (the baselines count); fewer than --n_trials, so that the subset is used.", type=int,
         unset_default=6),
]


MT_BENCH_FLAGS = [
    Flag("--chunk_size", "Questions answered and judged per chunk; the running mean is reported to Optuna after each "
         "chunk (for --prune).", 4, type=int),
    *PRUNING_FLAGS,
    Flag("--on_judge_failure", "When too few judgments succeed: fail the trial and go on ('fail_trial') or stop the "
         "study ('stop'); completed trials are kept either way.", "fail_trial", choices=("fail_trial", "stop")),
    Flag("--min_judged_fraction", "Share of a trial's judgments that must succeed; below it the trial fails (it is "
         "never scored 0).", 0.5, type=float),
]

@dataclass
class CommandLine:
    """One entry script's command line: its name, description and flag groups (argparse is built from it)."""

    prog: str
    description: str
    target_flags: list[Flag]
    evaluator_flags: list[Flag] | Callable[[], list[Flag]]  # a callable defers importing optional flag tables
    extra_groups: dict[str, list[Flag]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)  # overrides of shared defaults (None: "not given")

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=self.prog, description=self.description)
        groups = {"models": self.target_flags + MODEL_FLAGS, "merge method": MERGE_FLAGS, "search": SEARCH_FLAGS,
                  "output": OUTPUT_FLAGS,
                  "sharing": SHARING_FLAGS,
                  "evaluation": self.evaluator_flags() if callable(self.evaluator_flags) else self.evaluator_flags,
                  **self.extra_groups}
        for title, flags in groups.items():
            group = parser.add_argument_group(title)
            for flag in flags:
                flag.add_to(group)
        parser.add_argument("--dry_run", action="store_true", default=False,
                            help="Validate the inputs, print the plan and exit without loading any weights.")
        parser.set_defaults(**self.defaults)
        return parser


def parse_namespace(command_line: CommandLine, argv: Sequence[str] | None) -> argparse.Namespace:
    return parse_one_line(command_line.parser(), argv)


# MT-Bench judge (task_vector_opt.evaluation.judges). "Cohere" is the original scripts' judge name: it
# runs CohereForAI/c4ai-command-r-plus-4bit in-process (hf backend; needs bitsandbytes + CUDA).
JUDGE_FLAGS = [
    Flag("--judge_model_name", "Judge model: gpt-*/o1/o3/o4 (OpenAI), claude-* (Anthropic), azure:<deployment>, "
         "hf:<hub id or dir> or a local dir (in-process transformers), Cohere (the original's Command R+ 4-bit), "
         "or any name served at --judge_base_url.", "gpt-4",
         aliases=("--judge_model",), dest="judge_model_name"),
    Flag("--judge_backend", "Judge backend; 'auto' infers it from --judge_model_name and --judge_base_url / "
         "OPENAI_BASE_URL.", "auto", choices=("auto", "openai", "azure", "openai-compatible", "anthropic", "hf")),
    Flag("--judge_base_url", "URL of an OpenAI-compatible server (e.g. http://localhost:8000/v1; OPENAI_BASE_URL "
         "is read too), or of an Anthropic / Azure endpoint."),
    Flag("--parallel", "Judge requests in flight at once.", 2, type=int),
    Flag("--judge_rating_mode", "'text': the [[rating]] the judge writes; 'logprob': the expected rating under "
         "the judge's probabilities of the tokens 1..10 (OpenAI-style APIs and hf).", "text",
         choices=("text", "logprob")),
    Flag("--judge_timeout", "Seconds before one judge request times out (the SDK then retries it).", 120.0,
         type=float),
    Flag("--judge_max_retries", "Retries of one judge request on 429 / 5xx / timeouts (the SDK's own backoff).",
         5, type=int),
    Flag("--judge_cache", "SQLite file of past judgments, shared across runs and processes; 'none' disables it.",
         "runs/judge_cache.sqlite"),
    Flag("--judge_load_in_4bit", "Load an hf judge in 4 bits (needs bitsandbytes and a CUDA GPU).",
         action="store_true", default=False),
]


# ---------------------------------------------------------------------------------------------------------------
# MT-Bench questions and answer generation (task_vector_opt.evaluation.bench, task_vector_opt.evaluation.generation); checked by
# evaluation.bench.settings.bench_settings_from_args. Paths default to the original FastChat llm_judge layout.
BENCH_FLAGS = [
    Flag("--bench_name", "Bench to answer: the folder <bench_dir>/<bench_name>/ holding question.jsonl (and "
         "reference_answer/<model>.jsonl), as in FastChat's llm_judge.", "example"),
    Flag("--bench_dir", "FastChat's llm_judge data directory holding the benches.", DEFAULT_BENCH_DIR),
    Flag("--judge_file", "Judge prompts in FastChat's judge_prompts.jsonl format (single-v1, single-math-v1 and "
         "their -multi-turn versions are used).", DEFAULT_JUDGE_FILE),
    Flag("--max_new_tokens", "Most tokens generated per answer turn (as FastChat's gen_model_answer).", 512,
         type=int),
    Flag("--gen_batch_size", "Questions answered at once by the live model (left-padded batches).", 8, type=int),
    Flag("--conv_template", "FastChat conversation template name (e.g. vicuna_v1.1) used to build the prompts "
         "instead of the tokenizer's chat template (default: the tokenizer's chat template; FastChat's template "
         "for the model when the tokenizer has none)."),
    Flag("--holdout_fraction", "Share of the questions kept out of the search (stratified by category) and "
         "scored at the end as the holdout.", 0.0, type=float),
    Flag("--holdout_question_file", "A second FastChat question.jsonl used as the holdout instead of "
         "--holdout_fraction (its reference answers: reference_answer/ next to it, or inline)."),
]


# Who answers the bench questions (task_vector_opt.evaluation.vllm_backend): the MT-Bench, MoE and VLM scripts.
GENERATION_FLAGS = [
    Flag("--generation_backend", "Who answers the bench questions: 'hf' (transformers generate on the live model) "
         "or 'vllm' (a vLLM engine started once, into which each trial's changed tensors are pushed; needs a CUDA "
         "GPU and pip install -e '.[vllm]'). Same prompts, temperatures and stop rules.", "hf",
         choices=("hf", "vllm")),
    Flag("--vllm_gpu_memory_utilization", "With --generation_backend vllm: share of the GPU's memory vLLM takes "
         "(its weights and KV cache); the live model and the task vectors must fit in the rest, which "
         "--vector_placement auto and --dry_run count. Not with --generation_backend hf.", type=float,
         unset_default=0.5),
]


# ---------------------------------------------------------------------------------------------------------------
# MoE scripts (task_vector_opt.merging.moe, checked by merging.moe.config.moe_settings_from_args).
def moe_target_flags(max_experts: int) -> list[Flag]:
    return [Flag(f"--target_model_{i}", f"Target of expert {i}: hub id or local dir; expert {i} is this target + "
                 "w * (tuned - base) with its own weights" + (" (required)" if i <= 2 else " (optional)") + ".")
            for i in range(1, max_experts + 1)]


MOE_FLAGS = [
    Flag("--moe_config", "mergekit-moe YAML (base_model, gate_mode, dtype, experts_per_token, experts: "
         "[{source_model, positive_prompts, negative_prompts}]); source_model names a target as target_model_N or "
         "by its --target_model_N value (entries naming no target are taken in order)."),
    Flag("--gate_mode", "Routers: 'random' (seeded by --gate_seed; the original's behaviour), 'hidden' (base "
         "expert's hidden states of each expert's prompts, recomputed every trial) or 'cheap_embed' (prompt token "
         "embeddings). Default: the config's gate_mode (mergekit's default 'hidden'), or 'random' without "
         "--moe_config.", choices=("random", "hidden", "cheap_embed")),
    Flag("--experts_per_token", "Experts each token is routed to, at least 1 and at most the number of experts "
         "(default: the config's experts_per_token, else 2).",
         type=int),
    Flag("--gate_seed", "Seed of the random routers (--gate_mode random).", 42, type=int),
    Flag("--save_moe", "Also save the MoE itself to --output_dir (loadable with AutoModelForCausalLM), with a "
         "mergekit-moe YAML that rebuilds it from the saved experts.", action="store_true", default=False),
]


# ---------------------------------------------------------------------------------------------------------------
# Image-question bench of merge_task_vector_vlm.py (task_vector_opt.evaluation.vlm_bench, checked by
# vlm_bench_settings_from_args). Answer length, batch, holdout, chunks, pruning and the judge reuse the flags above.
VLM_BENCH_FLAGS = [
    Flag("--vlm_bench_file", "Image-question bench: JSONL, one item a line with question, image (a path relative "
         "to the file), answer, and optional id and category.", "examples/vlm_bench/bench.jsonl"),
    Flag("--vlm_metric", "Score of an answer: 'rouge_l' (ROUGE-L F x100 against the reference, on MeCab words, as "
         "the JA-VLM-Bench-In-the-Wild evaluation) or 'judge' (an LLM judge's 1-10 rating; needs "
         "--judge_model_name).", "rouge_l", choices=("rouge_l", "judge")),
]


def flag_named(flags: list[Flag], name: str) -> Flag:
    """One flag of a table, to reuse it in another script without declaring it twice."""
    return next(flag for flag in flags if flag.name == name)
