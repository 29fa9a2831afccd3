"""The entry scripts' pipelines: which flags each takes and which evaluator scores it.

Every script runs the same path (``run_pipeline``): parse and validate all flags, then either print the
plan (--dry_run) or run the shared engine with the pipeline's evaluator. An entry script is
``script_main(JGLUE)``: the same path with one-line errors and exit codes.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from task_vector_opt import engine
from task_vector_opt.cli.flags import DTYPE_FLAG, JGLUE_FLAGS, MT_BENCH_FLAGS, CommandLine, Flag, parse_namespace, run_cli
from task_vector_opt.run_config import PipelineExtras
from task_vector_opt.sources import ModelSource
from task_vector_opt.errors import UploadFailed, first_line
from task_vector_opt.cli.validation import check_model_output, validate
from task_vector_opt.evaluation.protocol import Evaluator

TARGET_FLAG = Flag("--target_model", "Model the task vector is added to: hub id or local dir.")


def _single_target(args: argparse.Namespace) -> list[ModelSource]:
    return [ModelSource("--target_model", args.target_model)]


@dataclass(frozen=True)
class Pipeline:
    """What one entry script runs: its command line, its evaluator and, for the MoE, its own model stages."""

    name: str  # goes into the default study name
    command_line: CommandLine
    settings_from_args: Callable[[argparse.Namespace], Any]  # validates the evaluator flags
    make_evaluator: Callable[[Any, Path], Evaluator]  # (settings, run_dir) -> evaluator, built once per run
    describe: Callable[[Any], str]  # one line for --dry_run
    targets_from_args: Callable[[argparse.Namespace], list[ModelSource]] = _single_target
    # Validates pipeline-specific flags (before any model loads) -> RunConfig.extra
    extra_from_args: Callable[[argparse.Namespace, list[ModelSource]], PipelineExtras] | None = None
    # The run's dtype (RunConfig.dtype), from the flags and the extras; default: --dtype as given
    dtype_from_args: Callable[[argparse.Namespace, PipelineExtras], str] = lambda args, extra: args.dtype
    prepare: Callable[[Any], engine.Workspace] = engine.prepare  # loads the live model and its merger
    plan: Callable[[Any, str], str] = engine.dry_run_plan  # the --dry_run output
    summary: Callable[[Any, engine.RunResult], str] | None = None  # extra lines after the engine's summary
    # Checks the directories the save writes (config, "holds this study's saved model?") -> those directories,
    # the one --push_to_hub uploads first, when they all hold it already (a finished rerun: nothing to do), else None
    check_outputs: Callable[[Any, Callable[[Path], bool]], list[Path] | None] = check_model_output


def _jglue_settings(args):
    from task_vector_opt.evaluation.jglue import jglue_settings_from_args

    return jglue_settings_from_args(args)


def _jglue_evaluator(settings, run_dir: Path):
    from task_vector_opt.evaluation.jglue import JGLUEEvaluator

    return JGLUEEvaluator(settings, run_dir / "lm_eval_tasks")


def _mt_bench_settings(args):
    from task_vector_opt.evaluation.mt_bench import mt_bench_settings_from_args

    return mt_bench_settings_from_args(args)


def _mt_bench_evaluator(settings, run_dir: Path):
    from task_vector_opt.evaluation.mt_bench import MTBenchEvaluator

    return MTBenchEvaluator(settings, run_dir)


def _mt_bench_flags() -> list[Flag]:
    from task_vector_opt.cli.flags import BENCH_FLAGS, GENERATION_FLAGS, JUDGE_FLAGS

    return BENCH_FLAGS + GENERATION_FLAGS + JUDGE_FLAGS + MT_BENCH_FLAGS


# A vision-language target (task_vector_opt.merging.vlm): its language model gets the vector. The JGLUE script
# accepts one (text scores of its language model); merge_task_vector_vlm.py scores image questions.
def _check_vlm_target(args: argparse.Namespace, targets: list[ModelSource]) -> PipelineExtras:
    from task_vector_opt.merging.vlm import check_local_vlm_target

    check_local_vlm_target(targets[0].name_or_path, args.base_model, targets[0].flag)
    return PipelineExtras()  # nothing new in the study's identity: the target is already part of it


def _checked_target_dirs(config) -> tuple[Path, Any]:
    """Hub targets are checked once downloaded (the local ones were checked with the flags), before loading."""
    from task_vector_opt.merging.models import resolve
    from task_vector_opt.merging.vlm import check_vlm_target

    target_dir = resolve(config.targets[0], config.cache_dir, config.allow_pickle)
    base_dir = resolve(config.base, config.cache_dir, config.allow_pickle)
    return target_dir, check_vlm_target(config.targets[0].flag, target_dir, base_dir)


def _prepare_any_target(config) -> engine.Workspace:
    _checked_target_dirs(config)
    return engine.prepare(config)


JGLUE = Pipeline(
    name="jglue",
    command_line=CommandLine(prog="merge_task_vector_jglue.py",
                 description="Find the weights w of target + w*(tuned - base) that maximize lm-eval task scores "
                             "(JGLUE by default), with Optuna.",
                 target_flags=[TARGET_FLAG], evaluator_flags=JGLUE_FLAGS),
    settings_from_args=_jglue_settings,
    make_evaluator=_jglue_evaluator,
    describe=lambda s: f"lm-eval tasks {', '.join(s.tasks)}",
    extra_from_args=_check_vlm_target,  # a VLM target: its language model is scored on text
    prepare=_prepare_any_target,
)

MT_BENCH = Pipeline(
    name="mt_bench",
    command_line=CommandLine(prog="merge_task_vector_mt_bench.py",
                 description="Find the weights w of target + w*(tuned - base) that maximize an MT-Bench-style bench "
                             "graded by an LLM judge, with Optuna.",
                 target_flags=[TARGET_FLAG], evaluator_flags=_mt_bench_flags),
    settings_from_args=_mt_bench_settings,
    make_evaluator=_mt_bench_evaluator,
    describe=lambda s: f"MT-Bench '{s.bench.bench_name}' judged by {s.judge.backend}:{s.judge.model}",
)


# MoE: 2 and 4 experts are the shipped scripts; the path serves any number (task_vector_opt.merging.moe).
def _moe_extra(args: argparse.Namespace, targets: list[ModelSource]) -> PipelineExtras:
    from task_vector_opt.merging.moe.config import moe_settings_from_args

    return PipelineExtras(moe=moe_settings_from_args(args, targets))


def _moe_dtype(args: argparse.Namespace, extra: PipelineExtras) -> str:
    """--dtype when given, else the --moe_config's dtype, else the --dtype flag's own default."""
    return args.dtype or extra["moe"].yaml_dtype or DTYPE_FLAG.default


def _moe_outputs(config, holds_saved_model: Callable[[Path], bool]) -> list[Path] | None:
    from task_vector_opt.merging.moe.config import check_moe_outputs

    return check_moe_outputs(config, holds_saved_model)


def _moe_targets(max_experts: int) -> Callable[[argparse.Namespace], list[ModelSource]]:
    def targets(args: argparse.Namespace) -> list[ModelSource]:
        from task_vector_opt.merging.moe.config import targets_from_args

        return targets_from_args(args, max_experts)

    return targets


def _moe_prepare(config):
    from task_vector_opt.merging.moe.workspace import prepare

    return prepare(config)


def _moe_plan(config, evaluator_line: str) -> str:
    from task_vector_opt.merging.moe.plan import dry_run_plan
    from task_vector_opt.search.scale_first import planned_space

    def searched(groups: list[str], n_vectors: int) -> list[str]:
        return planned_space(groups, n_vectors, config.optimize_mode, config.profile_knots, config.scale_first,
                             config.weight_min, config.weight_max).params

    return dry_run_plan(config, evaluator_line, searched)


def _moe_summary(config, result) -> str:
    from task_vector_opt.merging.moe.save import summary_lines

    return summary_lines(config)


def moe_mt_bench(n_experts: int) -> Pipeline:
    from task_vector_opt.cli.flags import MOE_FLAGS, moe_target_flags

    return Pipeline(
        name=f"mt_bench_moe_{n_experts}",
        command_line=CommandLine(prog=f"merge_task_vector_mt_bench_moe_{n_experts}_experts.py",
                     description=f"Build a Mixtral-style MoE of up to {n_experts} experts in memory (expert i = "
                                 "target_i + w_i*(tuned - base)) and find the weights that maximize an MT-Bench-style "
                                 "bench graded by an LLM judge, with Optuna.",
                     target_flags=moe_target_flags(n_experts), evaluator_flags=_mt_bench_flags,
                     extra_groups={"MoE": MOE_FLAGS}, defaults={"dtype": None}),
        settings_from_args=_mt_bench_settings,
        make_evaluator=_mt_bench_evaluator,
        describe=MT_BENCH.describe,
        targets_from_args=_moe_targets(n_experts),
        extra_from_args=_moe_extra,
        dtype_from_args=_moe_dtype,
        prepare=_moe_prepare,
        plan=_moe_plan,
        summary=_moe_summary,
        check_outputs=_moe_outputs,
    )


MT_BENCH_MOE_2 = moe_mt_bench(2)
MT_BENCH_MOE_4 = moe_mt_bench(4)


def _require_vlm_target(args: argparse.Namespace, targets: list[ModelSource]) -> PipelineExtras:
    from task_vector_opt.errors import UsageError
    from task_vector_opt.merging.vlm import check_local_vlm_target

    local = Path(targets[0].name_or_path).expanduser() / "config.json"
    if check_local_vlm_target(targets[0].name_or_path, args.base_model, targets[0].flag) is None and local.is_file():
        raise UsageError(targets[0].flag, f"{targets[0].name_or_path!r} is not a vision-language model (its config has no "
                                          "vision_config); the image bench needs one (merge_task_vector_jglue.py "
                                          "scores a text model)")
    return PipelineExtras()


def _prepare_vlm(config) -> engine.Workspace:
    """engine.prepare, then the target's processor takes the tokenizer's place: the evaluator needs its image
    processor and chat template, and the save writes it whole."""
    from transformers import AutoProcessor

    from task_vector_opt.errors import UsageError

    target_dir, vlm = _checked_target_dirs(config)
    if vlm is None:
        raise UsageError(config.targets[0].flag, f"{config.targets[0].name_or_path!r} is not a vision-language model; the "
                                                 "image bench needs one")
    workspace = engine.prepare(config)
    workspace.tokenizer = AutoProcessor.from_pretrained(target_dir, trust_remote_code=config.trust_remote_code)
    return workspace


def _vlm_flags() -> list[Flag]:
    from dataclasses import replace

    from task_vector_opt.cli.flags import BENCH_FLAGS, GENERATION_FLAGS, JUDGE_FLAGS, VLM_BENCH_FLAGS, flag_named

    reused = [flag_named(BENCH_FLAGS, name) for name in ("--max_new_tokens", "--gen_batch_size", "--holdout_fraction")]
    # No default judge here: ROUGE-L needs none, and --vlm_metric judge must name one.
    judge = [replace(flag, default=None, help=flag.help + " Needed by --vlm_metric judge.")
             if flag.name == "--judge_model_name" else flag for flag in JUDGE_FLAGS]
    return VLM_BENCH_FLAGS + reused + GENERATION_FLAGS + MT_BENCH_FLAGS + judge


def _vlm_settings(args):
    from task_vector_opt.evaluation.vlm_bench import vlm_bench_settings_from_args

    return vlm_bench_settings_from_args(args)


def _vlm_evaluator(settings, run_dir: Path):
    from task_vector_opt.evaluation.vlm_bench import VLMBenchEvaluator

    return VLMBenchEvaluator(settings, run_dir)


VLM = Pipeline(
    name="vlm",
    command_line=CommandLine(prog="merge_task_vector_vlm.py",
                 description="Add target + w*(tuned - base) to the language model of a vision-language target and "
                             "find the weights w that maximize an image-question bench (ROUGE-L or an LLM judge), "
                             "with Optuna.",
                 target_flags=[Flag("--target_model", "Vision-language model whose language model gets the task "
                                    "vector (LLaVA-1.5/NeXT, Qwen2-VL, Qwen2.5-VL, Gemma 3): hub id or local dir.")],
                 evaluator_flags=_vlm_flags),
    settings_from_args=_vlm_settings,
    make_evaluator=_vlm_evaluator,
    describe=lambda s: f"VLM bench {s.bench_file} scored by "
                       + ("ROUGE-L" if s.judge is None else f"{s.judge.backend}:{s.judge.model}"),
    extra_from_args=_require_vlm_target,
    prepare=_prepare_vlm,
)


def run_pipeline(pipeline: Pipeline, argv: Sequence[str] | None = None) -> None:
    """One run of ``pipeline`` on ``argv``; bad input raises UsageError before any model loads."""
    args = parse_namespace(pipeline.command_line, argv)
    engine.setup_logging(args.log_level)
    config = validate(pipeline, args)
    if config.dry_run:
        print(with_generation_memory(pipeline.plan(config, pipeline.describe(config.evaluator)), config))
        return
    if config.saved_output is not None:  # a rerun of a finished command: the model is saved; exit 0
        print(f"nothing to do: study {config.study_name} has its {config.n_trials} trials finished and its best "
              f"model is saved in {', '.join(str(p) for p in config.saved_output)}")
        if args.push_to_hub:  # the upload may be what failed last time; the hub skips files it already has
            push(args, config.saved_output[0], f"task_vector_opt merge: study {config.study_name}")
        return
    tracker = None
    if args.wandb:
        from task_vector_opt.outputs.tracking import WandbTracker

        tracker = WandbTracker(config.study_name, config.recipe_inputs())
    result = None
    try:
        result = engine.run(config, lambda c: pipeline.make_evaluator(c.evaluator, c.run_dir), pipeline.prepare,
                            callbacks=[tracker] if tracker else [])
    finally:
        if tracker is not None:
            tracker.finish(result)
    engine.print_summary(result)
    if pipeline.summary is not None and result.output_dir is not None:
        print(pipeline.summary(config, result))
    if args.push_to_hub and result.output_dir is not None:
        push(args, result.output_dir,
             f"task_vector_opt merge: study {result.study_name}, best trial {result.best_trial}")


def with_generation_memory(plan: str, config) -> str:
    """--dry_run with --generation_backend vllm: the plan's JSON gains vLLM's share of the GPU and what is left
    for the live model and the task vectors."""
    from task_vector_opt.merging.merger import gpu_share

    share = gpu_share(config.evaluator)
    if not share or not config.device.startswith("cuda"):
        return plan
    import json

    import torch

    free, total = torch.cuda.mem_get_info(torch.device(config.device))
    fields = json.loads(plan)
    memory = fields.get("memory_estimate_gib", {})
    # the dense plan names the device; the MoE's lists its parts, here all counted as if on the device
    estimate = memory.get(config.device, sum(v for v in memory.values() if isinstance(v, (int, float))))
    left = (free - share * total) / 2**30
    fields["vllm"] = {"gpu_memory_utilization": share, "vllm_gib": round(share * total / 2**30, 2),
                      "left_for_the_merge_gib": round(left, 2),
                      **({"fits": estimate <= left} if isinstance(estimate, (int, float)) else {})}
    return json.dumps(fields, indent=2)


def push(args: argparse.Namespace, folder: Path, message: str) -> None:
    """--push_to_hub: upload the saved folder; a failure is one line saying how to retry."""
    from task_vector_opt.outputs.hub import push_folder

    try:
        url = push_folder(folder, args.push_to_hub, args.hub_private, message)
    except Exception as exc:  # the model is saved; the user needs the reason and how to retry
        raise UploadFailed(f"upload to {args.push_to_hub!r} failed ({type(exc).__name__}: {first_line(exc)}); the "
                           f"model is saved in {folder}; retry with: hf upload {args.push_to_hub} {folder}") from None
    print(f"pushed to        : {url}")


def script_main(pipeline: Pipeline, argv: Sequence[str] | None = None) -> None:
    """What an entry script runs: ``run_pipeline`` with bad input as one line on stderr and exit code 2."""
    run_cli(lambda args: run_pipeline(pipeline, args), argv)
