"""Every input check, in one place, before any weight is read.

``validate`` is what each entry script calls: it checks the pipeline's own flags (the
evaluator's settings function: tasks, bench files, judge), the common flags, the model
sources (config.json and weights present, safetensors unless --allow_pickle), the
directories, the device, and that the storage can be reached. Each problem is one
UsageError naming the flag, the value and the fix (exit code 2).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from task_vector_opt.search.samplers import SAMPLERS
from task_vector_opt.cli.config import PICKLE_PATTERNS, WEIGHT_PATTERNS, ModelSource, RunConfig, default_study_name
from task_vector_opt.errors import UsageError, first_line
from task_vector_opt.merging.grouping import OPTIMIZE_MODES


def validate(spec, args: argparse.Namespace) -> RunConfig:
    """All checks of one run of ``spec`` (a pipelines.PipelineSpec); returns the RunConfig, or raises the
    first UsageError."""
    settings = spec.settings_from_args(args)
    check_sharing(args)
    targets = spec.targets_from_args(args)
    extra = spec.extra_from_args(args, targets) if spec.extra_from_args else {}  # e.g. the MoE's config
    config = build_config(spec.name, args, targets, settings, extra)
    check_storage(config.storage, config.study_name if config.finalize else None)
    return config


def check_model_source(source: ModelSource, allow_pickle: bool) -> None:
    """A local dir must hold a config and weights; anything else must look like a hub id."""
    path = Path(source.spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(source.flag, f"directory {source.spec!r} has no config.json; point it at a saved "
                                          "Hugging Face model directory")
        if any(any(path.glob(p)) for p in WEIGHT_PATTERNS):
            return
        if any(any(path.glob(p)) for p in PICKLE_PATTERNS):
            if allow_pickle:
                return
            raise UsageError(source.flag, f"directory {source.spec!r} holds only pickle weights (.bin/.pt); convert "
                                          "them to safetensors or pass --allow_pickle if you trust the file")
        raise UsageError(source.flag, f"directory {source.spec!r} has no *.safetensors weights")
    if path.exists():
        raise UsageError(source.flag, f"{source.spec!r} is a file, not a model directory or a hub id")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    looks_like_path = source.spec.startswith((".", "/", "~")) or "\\" in source.spec or source.spec.count("/") > 1
    try:
        if looks_like_path:
            raise HFValidationError("path")
        validate_repo_id(source.spec)
    except HFValidationError:
        raise UsageError(source.flag, f"{source.spec!r} is neither a directory with model weights nor a Hugging Face "
                                      "hub id (like mistralai/Mistral-7B-v0.1); check the path") from None


def check_writable_dir(flag: str, value: str) -> None:
    """The nearest existing ancestor must be a directory we can really create files in."""
    path = Path(value).expanduser()
    probe = path
    while not probe.exists():
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(str(probe))
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise UsageError(flag, f"{value!r} is not a writable directory ({exc.strerror or exc}); choose a directory "
                               "you can write to") from None


def check_output_dir(value: str, overwrite: bool) -> None:
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError("--output_dir", f"{value!r} is a file; give a directory path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UsageError("--output_dir", f"{value!r} exists and is not empty; choose a new directory or pass "
                                         "--overwrite_output_dir")
    check_writable_dir("--output_dir", value)


def resolve_device(value: str | None) -> str:
    import torch

    if value is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(value)
    except RuntimeError:
        raise UsageError("--device", f"{value!r} is not a device; use cuda, cuda:N, cpu or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device", f"{value!r} was asked for but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError("--device", f"{value!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device", f"{value!r} was asked for but MPS is not available here; use --device cpu")
    return str(device)


def check_finalizable(storage, study_name: str) -> None:
    """--finalize needs a study with a completed trial; say so before any model loads."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise UsageError("--finalize", f"there is no study {study_name!r} in this storage; run the search first "
                                       "(the same command without --finalize), or pass its --study_name") from None
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise UsageError("--finalize", f"study {study_name!r} has no completed trial yet; let the search run first")


def check_sharing(args: argparse.Namespace) -> None:
    """--push_to_hub (repo id, token, not offline) and --wandb (installed)."""
    from task_vector_opt.outputs.hub import check_push_to_hub
    from task_vector_opt.outputs.tracking import check_wandb

    check_push_to_hub(args.push_to_hub)
    check_wandb(args.wandb)


def check_storage(url: str, finalize_study: str | None = None) -> None:
    """The storage must be reachable now, not after the models have loaded; with --finalize it must hold
    ``finalize_study`` with a completed trial."""
    from task_vector_opt.search.study import is_journal, open_storage

    if finalize_study is None and (url.startswith("sqlite:///") or is_journal(url)):
        path = url.removeprefix("sqlite:///").removeprefix("journal:")
        check_writable_dir("--storage", str(Path(path).expanduser().parent))
        return
    storage = open_storage(url)  # connects (and creates Optuna's tables), or raises UsageError
    try:
        if finalize_study is not None:
            check_finalizable(storage, finalize_study)
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()


def decoder_layer_count(source: ModelSource, cache_dir: str | None, trust_remote_code: bool) -> int | None:
    """The number of decoder layers from the model's config.json (a VLM's text config); None if not stated."""
    path = Path(source.spec).expanduser()
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
    else:  # a hub id: config.json only, no weights
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(source.spec, cache_dir=cache_dir,
                                                trust_remote_code=trust_remote_code).to_dict()
        except Exception as exc:  # noqa: BLE001 - unreachable hub or a private repo: one line naming the flag
            raise UsageError(source.flag, f"cannot read config.json of {source.spec!r} to count its layers for "
                                          f"--optimize_mode profile ({first_line(exc)})") from None
    for scope in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
            if isinstance(scope.get(key), int):
                return scope[key]
    return None


def check_profile_knots(knots: int, targets: list[ModelSource], pipeline: str, cache_dir: str | None,
                        trust_remote_code: bool) -> None:
    """--profile_knots must be between 1 and the target's number of decoder layers (from config.json)."""
    if pipeline.startswith("mt_bench_moe"):
        raise UsageError("--optimize_mode", "profile is not available for the MoE scripts yet; use layer, all or "
                                            "parameter")
    if knots < 1:
        raise UsageError("--profile_knots", f"must be at least 1 (got {knots}); 1 gives one weight for every layer")
    layers = decoder_layer_count(targets[0], cache_dir, trust_remote_code)
    if layers is not None and knots > layers:
        raise UsageError("--profile_knots", f"{knots} knots for {targets[0].spec!r}, which has {layers} decoder "
                                            f"layers; give at most {layers}")


def build_config(pipeline: str, args: argparse.Namespace, targets: list[ModelSource], evaluator: Any,
                 extra: dict[str, Any] | None = None) -> RunConfig:
    """Validate the flags common to every pipeline and assemble the RunConfig."""
    if args.optimize_mode not in OPTIMIZE_MODES:
        raise UsageError("--optimize_mode", f"unknown mode {args.optimize_mode!r}; choose {', '.join(OPTIMIZE_MODES)}")
    if args.optuna_sampler not in SAMPLERS:
        raise UsageError("--optuna_sampler", f"unknown sampler {args.optuna_sampler!r}; choose one of "
                                             f"{', '.join(SAMPLERS)}")
    if args.n_trials < 1:
        raise UsageError("--n_trials", f"must be at least 1 (got {args.n_trials})")
    if args.holdout_top_k < 1:
        raise UsageError("--holdout_top_k", f"must be at least 1 (got {args.holdout_top_k})")
    if not args.heartbeat_interval > 0:
        raise UsageError("--heartbeat_interval", f"must be a positive number of seconds (got {args.heartbeat_interval})")
    if args.search_only and args.finalize:
        raise UsageError("--finalize", "cannot be combined with --search_only (a worker either searches or saves)")
    if args.weight_min >= args.weight_max:
        raise UsageError("--weight_min", f"({args.weight_min}) must be lower than --weight_max ({args.weight_max})")
    for source in [*targets, ModelSource("--base_model", args.base_model), ModelSource("--tuned_model",
                                                                                         args.tuned_model)]:
        if not source.spec:
            raise UsageError(source.flag, "is required")
        check_model_source(source, args.allow_pickle)
    if args.optimize_mode == "profile":
        check_profile_knots(args.profile_knots, targets, pipeline, args.cache_dir, args.trust_remote_code)
    if args.cache_dir is not None:
        check_writable_dir("--cache_dir", args.cache_dir)
    if not args.search_only:  # a search-only worker writes no model
        check_output_dir(args.output_dir, args.overwrite_output_dir)
    device = resolve_device(args.device)

    config = RunConfig(
        pipeline=pipeline,
        targets=targets,
        base=ModelSource("--base_model", args.base_model),
        tuned=ModelSource("--tuned_model", args.tuned_model),
        cache_dir=args.cache_dir,
        dtype=args.dtype,
        device=device,
        vector_placement=args.vector_placement,
        skip_embed=args.skip_embed,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
        optimize_mode=args.optimize_mode,
        profile_knots=args.profile_knots if args.optimize_mode == "profile" else 0,
        sampler=args.optuna_sampler,
        seed=args.optuna_seed,
        n_trials=args.n_trials,
        weight_min=args.weight_min,
        weight_max=args.weight_max,
        storage="",
        study_name="",
        run_dir=Path(),
        baseline_trials=not args.no_baseline_trials,
        holdout_top_k=args.holdout_top_k,
        heartbeat_interval=args.heartbeat_interval,
        search_only=args.search_only,
        finalize=args.finalize,
        save_on_interrupt=args.save_on_interrupt,
        output_dir=Path(args.output_dir).expanduser(),
        overwrite_output_dir=args.overwrite_output_dir,
        log_level=args.log_level,
        dry_run=args.dry_run,
        evaluator=evaluator,
        extra=dict(extra or {}),
    )
    config.study_name = args.study_name or default_study_name(pipeline, config.recipe_inputs())
    config.run_dir = Path(args.run_dir or Path("runs") / config.study_name).expanduser()
    check_writable_dir("--run_dir", str(config.run_dir))
    config.storage = args.storage or f"sqlite:///{(config.run_dir / 'study.db').resolve()}"
    return config
