"""Every input check, in one place, before any weight is read.

``validate`` is what each entry script calls: it checks the pipeline's own flags (the
evaluator's settings function: tasks, bench files, judge), the common flags, the model
sources (config.json and weights present, safetensors unless --allow_pickle), the
directories, the device, and that the storage can be reached. It also tells a rerun whose work is done
(--output_dir holds this study's saved best model: ``RunConfig.saved_output``) and names what differs from a
study of the same models that this run does not resume. Each problem is one
UsageError naming the flag, the value and the fix (exit code 2).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable

from task_vector_opt.cli.flags import MERGE_FLAGS, flag_named
from task_vector_opt.search.samplers import SAMPLERS
from task_vector_opt.errors import UsageError
from task_vector_opt.files import check_new_file, check_output_dir, check_writable_dir
from task_vector_opt.merging.grouping import AUTO_MODE, OPTIMIZE_MODES
from task_vector_opt.merging.models import check_model_source
from task_vector_opt.run_config import RunConfig, default_study_name
from task_vector_opt.sources import ModelSource

log = logging.getLogger(__name__)


def validate(pipeline, args: argparse.Namespace) -> RunConfig:
    """All checks of one run of ``pipeline`` (a pipelines.Pipeline); returns the RunConfig, or raises the
    first UsageError."""
    settings = pipeline.settings_from_args(args)
    check_sharing(args)
    targets = pipeline.targets_from_args(args)
    extra = pipeline.extra_from_args(args, targets) if pipeline.extra_from_args else {}  # e.g. the MoE's config
    config = build_config(pipeline.name, args, targets, settings, extra, dtype=pipeline.dtype_from_args(args, extra))
    check_generation_backend(config)
    check_storage(config.storage, config.study_name if config.finalize else None)
    if args.study_name:  # a default name hashes the identity; a chosen one may name a study of other inputs
        from task_vector_opt.search.existing import check_named_study

        check_named_study(config.storage, config.study_name, config.study_identity())
    if not config.search_only:  # a search-only worker writes no model
        config.saved_output = pipeline.check_outputs(config, holds_this_studys_model(config))
    log_optimize_mode(args.optimize_mode)  # after every check: a bad input is the run's only line
    if config.saved_output is None and not config.finalize:
        from task_vector_opt.search.existing import related_study_note

        default_run_dir = config.run_dir if args.run_dir is None and args.storage is None else None
        note = related_study_note(config.storage, config.study_name, config.study_identity(), default_run_dir)
        if note:
            log.warning(note)
    return config


def check_generation_backend(config: RunConfig) -> None:
    """--generation_backend vllm: installed, a GPU, and an architecture vLLM serves (the MoE scripts build a
    Mixtral), before any model loads."""
    if getattr(config.evaluator, "generation_backend", "hf") != "vllm":
        return
    from task_vector_opt.evaluation.vllm_backend import check_vllm_runs_here, check_vllm_serves
    from task_vector_opt.merging.models import config_of

    check_vllm_runs_here()
    if config.pipeline.startswith("mt_bench_moe"):
        check_vllm_serves(["MixtralForCausalLM"], "the Mixtral MoE these scripts build")
        return
    target = config.targets[0]
    architectures = config_of(target, config.cache_dir, config.trust_remote_code).architectures
    check_vllm_serves(list(architectures or []), f"{target.flag} {target.name_or_path!r}")


def check_model_output(config: RunConfig, holds_saved_model: Callable[[Path], bool]) -> list[Path] | None:
    """The single-model scripts' --output_dir; returns it when it already holds this study's saved best model."""
    saved = check_output_dir(str(config.output_dir), config.overwrite_output_dir, holds_saved_model)
    return [config.output_dir] if saved else None


def holds_this_studys_model(config: RunConfig) -> Callable[[Path], bool]:
    """A test of a non-empty output directory: its merge_recipe.json names this study and the study's best trial,
    and the study has its --n_trials finished, so running again would save the very same model."""
    best_trial: list[int | None] = []  # looked up once, and only when a recipe names this study

    def holds(path: Path) -> bool:
        try:
            recipe = json.loads((path / "merge_recipe.json").read_text(encoding="utf-8"))
            study, trial = recipe["study"]["name"], recipe["best"]["trial"]
        except (OSError, ValueError, KeyError, TypeError):  # no recipe, or not ours
            return False
        if study != config.study_name:
            return False
        if not best_trial:
            from task_vector_opt.search.existing import finished_best_trial

            best_trial.append(finished_best_trial(config.storage, config.study_name, config.n_trials))
        return best_trial[0] is not None and trial == best_trial[0]

    return holds


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

    check_sqlite_file(url)
    if finalize_study is None and (url.startswith("sqlite:///") or is_journal(url)):
        check_new_file("--storage", url.removeprefix("sqlite:///").removeprefix("journal:"), "the study file")
        return
    storage = open_storage(url)  # connects (and creates Optuna's tables), or raises UsageError
    try:
        if finalize_study is not None:
            check_finalizable(storage, finalize_study)
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()


def check_sqlite_file(url: str) -> None:
    """A SQLite storage must name a file: an in-memory database (or none) is gone with its connection, and the
    run opens several, so Optuna's tables would be missing after the models load."""
    fix = "give a file, e.g. sqlite:///runs/my_study.db, or leave --storage out (a study.db in --run_dir)"
    if url in ("sqlite:", "sqlite://"):  # SQLAlchemy's in-memory database
        raise UsageError("--storage", f"{url!r} is an in-memory database, gone with its connection; {fix}")
    if not url.startswith("sqlite:///"):
        return  # not SQLite, or a form SQLAlchemy itself refuses when the storage is opened
    path, _, query = url.removeprefix("sqlite:///").partition("?")
    if not path:
        raise UsageError("--storage", f"{url!r} names no database file; {fix}")
    if path == ":memory:" or path.startswith("file::memory:") or "mode=memory" in query:
        raise UsageError("--storage", f"{url!r} is an in-memory database: the run opens the storage several times "
                                      f"and each connection would see an empty one, and nothing could resume; {fix}")


def tuned_sources(value: str | None) -> list[ModelSource]:
    """--tuned_model: one model, or several comma-separated; each gives its own task vector."""
    if not value:
        return [ModelSource("--tuned_model", value or "")]
    specs = [spec.strip() for spec in value.split(",")]
    if any(not spec for spec in specs):
        raise UsageError("--tuned_model", f"{value!r} has an empty entry; give models separated by single commas")
    resolved = [str(Path(s).expanduser().resolve()) if Path(s).expanduser().is_dir() else s for s in specs]
    for index, spec in enumerate(resolved):
        if spec in resolved[:index]:
            raise UsageError("--tuned_model", f"{specs[index]!r} is given twice; each tuned model gives one task "
                                              "vector, so list it once (its weight is searched)")
    return [ModelSource("--tuned_model", spec) for spec in specs]


def check_tuned_matches_base(tuned: ModelSource, base: ModelSource) -> None:
    """Names and shapes of a local tuned model's tensors against the base's, from the safetensors headers only."""
    from task_vector_opt.merging.models import WeightFiles

    tuned_dir, base_dir = Path(tuned.name_or_path).expanduser(), Path(base.name_or_path).expanduser()
    if not (tuned_dir.is_dir() and base_dir.is_dir()):
        return  # a hub model is checked when its task vector is built
    if not (any(tuned_dir.glob("*.safetensors")) and any(base_dir.glob("*.safetensors"))):
        return  # pickle weights (--allow_pickle) have no header to read
    tuned_files, base_files = WeightFiles(tuned_dir), WeightFiles(base_dir)
    try:
        missing = [key for key in base_files.keys() if key not in tuned_files]
        extra = [key for key in tuned_files.keys() if key not in base_files]
        if missing or extra:
            which = (f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the base lacks")
            count = len(missing) + len(extra)
            raise UsageError("--tuned_model", f"{tuned.name_or_path!r} {which} ({count} tensor name(s) differ from "
                                              f"--base_model {base.name_or_path!r}); every tuned model must be a fine-tune "
                                              "of the base, with the same architecture")
        for key in base_files.keys():
            if tuned_files.shape(key) != base_files.shape(key):
                raise UsageError("--tuned_model", f"{tuned.name_or_path!r}: tensor {key} has shape {tuned_files.shape(key)} "
                                                  f"but --base_model has {base_files.shape(key)}; every tuned model "
                                                  "must be a fine-tune of the base, with the same architecture")
    finally:
        tuned_files.close()
        base_files.close()


def merge_settings_from_args(args: argparse.Namespace):
    """--merge_method and its options -> MergeSettings, or the UsageError of the first bad one."""
    from task_vector_opt.merging.methods import DENSITY_GRID, DROPPING_METHODS, MERGE_METHODS, MergeSettings

    method = args.merge_method
    if method not in MERGE_METHODS:
        raise UsageError("--merge_method", f"unknown method {method!r}; choose one of {', '.join(MERGE_METHODS)}")
    densities = {}  # None: the flag was not given (its default applies)
    for flag, value in (("--density_min", args.density_min), ("--density_max", args.density_max)):
        densities[flag] = flag_named(MERGE_FLAGS, flag).unset_default if value is None else value
        if value is None:
            continue
        if not 0.0 < value <= 1.0:
            raise UsageError(flag, f"({value}) must be in (0, 1]: a density is the share of a vector's entries kept")
        if abs(value * DENSITY_GRID - round(value * DENSITY_GRID)) > 1e-6:
            nearest = min(max(round(value * DENSITY_GRID), 1), DENSITY_GRID) / DENSITY_GRID  # itself in (0, 1]
            raise UsageError(flag, f"({value}) must be a multiple of {1 / DENSITY_GRID} (densities are searched "
                                   f"on that grid); e.g. {nearest}")
        if method == "task_arithmetic":
            raise UsageError(flag, f"({value}) does nothing with task_arithmetic, which keeps every entry; choose "
                                   f"--merge_method ties, dare_linear or dare_ties, or drop {flag}")
    density_min, density_max = densities["--density_min"], densities["--density_max"]
    if density_min > density_max:
        raise UsageError("--density_min", f"({density_min}) must not be above --density_max ({density_max})")
    if args.dare_seed is not None and method not in DROPPING_METHODS:
        raise UsageError("--dare_seed", f"only applies to a method that drops entries at random (dare_linear, "
                                        f"dare_ties), not {method}; drop --dare_seed or change --merge_method")
    if args.density_per_group and method == "task_arithmetic":
        raise UsageError("--density_per_group", "task_arithmetic keeps every entry, so it has no density to "
                                                "search; choose --merge_method ties, dare_linear or dare_ties")
    return MergeSettings(method=method, density_min=density_min, density_max=density_max,
                         density_per_group=args.density_per_group, dare_seed=args.dare_seed,
                         normalize=args.merge_normalize, dare_rescale=args.dare_rescale)


def decoder_layer_count(source: ModelSource, cache_dir: str | None, trust_remote_code: bool) -> int | None:
    """The number of decoder layers from the model's config (a VLM's text config); None if not stated."""
    from task_vector_opt.merging.models import config_of

    layers = getattr(config_of(source, cache_dir, trust_remote_code).get_text_config(), "num_hidden_layers", None)
    return layers if isinstance(layers, int) else None


DEFAULT_PROFILE_KNOTS = 4  # the default strategy's knots (benchmarks/bench_search.py; docs/en/benchmarks.md, search)


def resolve_optimize_mode(requested: str) -> str:
    """--optimize_mode auto (the default): profile, for one vector or several, every merge method, the MoE
    scripts included (docs: search, for the measurements behind it)."""
    return "profile" if requested == AUTO_MODE else requested


def log_optimize_mode(requested: str) -> None:
    """Under --optimize_mode auto, one line on the mode it chose and why; logged once the inputs are all checked."""
    if requested == AUTO_MODE:
        log.info("--optimize_mode auto: profile (knots along depth for each vector, and each expert in the MoE "
                 "scripts), searched as offsets from each vector's scale found first; it measured best on every dense "
                 "testbed kind, one vector or two (docs/en/benchmarks.md, search benchmark); the MoE scripts use the "
                 "same path per expert, not benchmarked (their score needs an LLM judge)")


def resolve_scale_search(requested: str, optimize_mode: str) -> bool:
    """--scale_search auto (the default): on under --optimize_mode auto, off under a mode the user named."""
    if requested not in ("auto", "on", "off"):
        raise UsageError("--scale_search", f"unknown value {requested!r}; choose auto, on or off")
    if requested == "auto":
        on = optimize_mode == AUTO_MODE
        # debug: a bad input found later must still be the run's only line on stderr
        log.debug("--scale_search auto: %s", "on (the scale of each vector first, then the shape)" if on else
                  f"off (--optimize_mode {optimize_mode} was named; --scale_search on adds the scale stage)")
        return on
    return requested == "on"


def profile_knot_count(knots: int | None, targets: list[ModelSource], pipeline: str, cache_dir: str | None,
                       trust_remote_code: bool) -> int:
    """The knots of profile mode: --profile_knots, between 1 and the target's number of decoder layers (from
    config.json), or by default DEFAULT_PROFILE_KNOTS (the number of layers when the model has fewer)."""
    if knots is not None and knots < 1:
        raise UsageError("--profile_knots", f"must be at least 1 (got {knots}); 1 gives one weight for every layer")
    layers = decoder_layer_count(targets[0], cache_dir, trust_remote_code)
    if knots is None:
        return DEFAULT_PROFILE_KNOTS if layers is None else min(DEFAULT_PROFILE_KNOTS, layers)
    if layers is not None and knots > layers:
        raise UsageError("--profile_knots", f"{knots} knots for {targets[0].name_or_path!r}, which has {layers} decoder "
                                            f"layers; give at most {layers}")
    return knots


def check_weights_fit_dtype(weight_min: float, weight_max: float, dtype: str) -> None:
    """Each trial adds weight * (tuned - base) in the run's dtype, the weight itself cast to it: a weight beyond
    the dtype's largest finite value is inf there, so every trial would fail on overflow."""
    import torch

    def largest(name: str) -> float:
        return torch.finfo(getattr(torch, name)).max

    for flag, value in (("--weight_max", weight_max), ("--weight_min", weight_min)):
        if abs(value) > largest(dtype):
            wider = [name for name in ("bfloat16", "float32") if name != dtype and largest(name) >= abs(value)]
            raise UsageError(flag, f"({value:g}) is beyond what --dtype {dtype} holds: the merge adds weight * "
                                   f"(tuned - base) in {dtype}, so |weight| must be at most its largest value "
                                   f"{largest(dtype):g}; give a weight range within +-{largest(dtype):g}"
                                   + (f", or --dtype {' or '.join(wider)}" if wider else ""))


def check_item_subset_starts(evaluator: Any, args: argparse.Namespace) -> None:
    """--item_subset_after only matters with --item_subset, and the subset only once that many trials were
    scored in full: with --n_trials no higher, no trial would ever score the subset."""
    subset = getattr(evaluator, "item_subset", 0.0)  # the lm-eval scripts' setting; the others have none
    given_after = getattr(args, "item_subset_after", None)  # None: not given
    if given_after is not None and not subset:
        raise UsageError("--item_subset_after", f"({given_after}) does nothing without --item_subset; add "
                                                "--item_subset (e.g. 0.33), or drop --item_subset_after")
    if subset and args.n_trials <= evaluator.item_subset_after:
        flag = "--item_subset_after" if given_after is not None else "--item_subset"
        raise UsageError(flag, f"the subset would never be used: it is chosen after {evaluator.item_subset_after} "
                               f"trials scored in full (--item_subset_after) and --n_trials is {args.n_trials}; raise "
                               f"--n_trials above {evaluator.item_subset_after} or lower --item_subset_after")


def build_config(pipeline: str, args: argparse.Namespace, targets: list[ModelSource], evaluator: Any,
                 extra: dict[str, Any] | None = None, dtype: str | None = None) -> RunConfig:
    """Validate the flags common to every pipeline and assemble the RunConfig."""
    if args.optimize_mode not in (AUTO_MODE, *OPTIMIZE_MODES):
        raise UsageError("--optimize_mode", f"unknown mode {args.optimize_mode!r}; choose "
                                            f"{', '.join((AUTO_MODE, *OPTIMIZE_MODES))}")
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
    check_weights_fit_dtype(args.weight_min, args.weight_max, dtype or args.dtype)
    check_item_subset_starts(evaluator, args)
    tuned_models = tuned_sources(args.tuned_model)
    for source in [*targets, ModelSource("--base_model", args.base_model), *tuned_models]:
        if not source.name_or_path:
            raise UsageError(source.flag, "is required")
        check_model_source(source, args.allow_pickle)
    for source in tuned_models:
        check_tuned_matches_base(source, ModelSource("--base_model", args.base_model))
    merge = merge_settings_from_args(args)
    optimize_mode = resolve_optimize_mode(args.optimize_mode)
    knots = 0
    if optimize_mode == "profile":
        knots = profile_knot_count(args.profile_knots, targets, pipeline, args.cache_dir, args.trust_remote_code)
    elif args.profile_knots is not None:  # None: not given
        raise UsageError("--profile_knots", f"({args.profile_knots}) does nothing with --optimize_mode "
                                            f"{optimize_mode}, which has no knots; use --optimize_mode profile (or "
                                            "auto, the default), or drop --profile_knots")
    scale_first = resolve_scale_search(args.scale_search, args.optimize_mode)
    if args.cache_dir is not None:
        check_writable_dir("--cache_dir", args.cache_dir)
    device = resolve_device(args.device)

    config = RunConfig(
        pipeline=pipeline,
        targets=targets,
        base=ModelSource("--base_model", args.base_model),
        tuned=tuned_models[0],
        tuned_models=tuned_models,
        merge=merge,
        cache_dir=args.cache_dir,
        dtype=dtype or args.dtype,  # the pipeline may resolve it (the MoE: from its config file)
        device=device,
        vector_placement=args.vector_placement,
        skip_embed=args.skip_embed,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
        optimize_mode=optimize_mode,
        profile_knots=knots,
        scale_first=scale_first,
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
    config.study_name = args.study_name or default_study_name(pipeline, config.study_identity())
    config.run_dir = Path(args.run_dir or Path("runs") / config.study_name).expanduser()
    check_writable_dir("--run_dir", str(config.run_dir))
    config.storage = args.storage or f"sqlite:///{(config.run_dir / 'study.db').resolve()}"
    return config
