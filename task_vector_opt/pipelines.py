"""The entry scripts' pipelines: which flags each takes and which evaluator scores it."""
from __future__ import annotations

from typing import Sequence

from . import engine
from .cli import JGLUE_FLAGS, Flag, Pipeline, parse_namespace, run_cli
from .config import ModelSource, build_config

TARGET_FLAG = Flag("--target_model", "Model the task vector is added to: hub id or local dir.")

JGLUE = Pipeline(
    prog="merge_task_vector_jglue.py",
    description="Find the weights w of target + w*(tuned - base) that maximize lm-eval task scores "
                "(JGLUE by default), with Optuna.",
    target_flags=[TARGET_FLAG],
    evaluator_flags=JGLUE_FLAGS,
)


def jglue_main(argv: Sequence[str] | None = None) -> None:
    from .evaluators.jglue import JGLUEEvaluator, jglue_settings_from_args

    args = parse_namespace(JGLUE, argv)
    engine.setup_logging(args.log_level)
    settings = jglue_settings_from_args(args)
    config = build_config("jglue", args, [ModelSource("--target_model", args.target_model)], settings)
    if config.dry_run:
        print(engine.dry_run_plan(config, f"lm-eval tasks {', '.join(settings.tasks)}"))
        return
    result = engine.run(config, lambda c: JGLUEEvaluator(c.evaluator, c.run_dir / "lm_eval_tasks"))
    engine.print_summary(result)


def main_jglue() -> None:
    run_cli(jglue_main)
