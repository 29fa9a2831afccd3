"""Shared checks of the bad-input tests: no model may load, and the error is one line with exit code 2."""
import pytest

from task_vector_opt.cli.flags import run_cli


def refuse_model_loads(monkeypatch, *modules) -> None:
    """Make loading or resolving a model in ``modules`` fail the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    for module in modules:
        monkeypatch.setattr(module, "load_model", refuse)
        monkeypatch.setattr(module, "resolve", refuse)


def expect_usage_error(entry, argv, capsys, flag, *fragments) -> str:
    """Run ``entry(argv)`` as a script would; it must exit 2 with one 'error:' line naming ``flag``."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(entry, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and flag in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def jglue_in_process(argv) -> None:
    """merge_task_vector_jglue.py run in this process, without the exit-code wrapper (run_cli adds it where needed)."""
    from task_vector_opt.cli.pipelines import JGLUE, run_pipeline

    run_pipeline(JGLUE, argv)


def refuse_every_model_load(monkeypatch) -> None:
    """No model loads in this process, dense or MoE (the real runs of such tests load theirs in a subprocess)."""
    from task_vector_opt import engine
    from task_vector_opt.merging.moe import workspace as moe_workspace

    refuse_model_loads(monkeypatch, engine, moe_workspace)
