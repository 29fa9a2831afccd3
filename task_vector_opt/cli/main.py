"""The console command ``task-vector-opt <script> [flags]``: the five entry scripts under one name, for an
installed package (a checkout also has the root scripts, merge_task_vector_<script>.py, which take the same flags)."""
from __future__ import annotations

import difflib
import sys
from dataclasses import replace
from typing import Sequence

from task_vector_opt import __version__
from task_vector_opt.errors import UsageError, run_cli

COMMAND = "task-vector-opt"
# script name -> the pipeline's name in task_vector_opt.cli.pipelines (the root script is merge_task_vector_<name>.py)
SCRIPTS = {
    "jglue": "JGLUE",
    "mt_bench": "MT_BENCH",
    "mt_bench_moe_2_experts": "MT_BENCH_MOE_2",
    "mt_bench_moe_4_experts": "MT_BENCH_MOE_4",
    "vlm": "VLM",
}
USAGE = (f"usage: {COMMAND} {{{','.join(SCRIPTS)}}} [flags]   (flags: {COMMAND} <script> --help)\n"
         f"       {COMMAND} --version")


def script_name(given: str) -> str:
    """The script named on the command line; a root script's file name (merge_task_vector_jglue.py) works too."""
    name = given.removesuffix(".py").removeprefix("merge_task_vector_")
    if name not in SCRIPTS:
        close = difflib.get_close_matches(name, list(SCRIPTS), n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}?" if close else f"choose one of {', '.join(SCRIPTS)}"
        raise UsageError(None, f"{given!r} is not a script of {COMMAND}; {hint}")
    return name


def run(argv: Sequence[str]) -> None:
    from task_vector_opt.cli import pipelines
    from task_vector_opt.cli.pipelines import run_pipeline

    if not argv:
        raise UsageError(None, f"name a script: {COMMAND} {{{','.join(SCRIPTS)}}} [flags]")
    name = script_name(argv[0])
    pipeline = getattr(pipelines, SCRIPTS[name])
    # --help and argparse's messages name the command as typed
    pipeline = replace(pipeline, command_line=replace(pipeline.command_line, prog=f"{COMMAND} {name}"))
    run_pipeline(pipeline, list(argv[1:]))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return
    if argv[:1] == ["--version"]:
        print(f"{COMMAND} {__version__}")
        return
    run_cli(run, argv)


if __name__ == "__main__":
    main()
