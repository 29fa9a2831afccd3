"""A float flag refuses nan and inf like any other bad value: one line naming the flag and the value, exit 2,
before any model loads (Python's float() accepts them; --weight_min nan used to reach Optuna)."""
import pytest

from task_vector_opt.merging.moe import workspace as moe_workspace
from task_vector_opt import engine
from task_vector_opt.cli import flags
from task_vector_opt.cli.pipelines import JGLUE, MT_BENCH, MT_BENCH_MOE_2, run_pipeline
from cli_checks import expect_usage_error, refuse_model_loads
from mini_bench import write_mini_bench
from tiny_models import make_model, make_trio, save

FLAG_TABLES = (flags.MODEL_FLAGS, flags.SEARCH_FLAGS, flags.OUTPUT_FLAGS, flags.SHARING_FLAGS, flags.JGLUE_FLAGS,
               flags.MT_BENCH_FLAGS, flags.JUDGE_FLAGS, flags.BENCH_FLAGS, flags.MOE_FLAGS)
FLOAT_FLAGS = sorted({flag.name for table in FLAG_TABLES for flag in table if flag.type is float})
NON_FINITE = ["nan", "NaN", "inf", "-inf", "1e400"]  # 1e400 overflows to inf; given as --flag=value (-inf is no option)


def test_the_flags_the_issue_names_are_among_the_float_flags():
    # The parametrization below is read from the flag tables; this keeps it from silently shrinking.
    assert {"--weight_min", "--weight_max", "--heartbeat_interval", "--judge_timeout", "--holdout_fraction",
            "--min_judged_fraction"} <= set(FLOAT_FLAGS)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("flag_values")
    return {**make_trio(root, "llama"), "target2": save(make_model("llama", seed=3), None, root / "target2")}


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    refuse_model_loads(monkeypatch, engine, moe_workspace)


def command_taking(flag: str, models, tmp_path):
    """The first script whose flags include ``flag``, and a command line that is valid apart from it."""
    common = ["--base_model", str(models["base"]), "--tuned_model", str(models["tuned"]),
              "--output_dir", str(tmp_path / "out"), "--run_dir", str(tmp_path / "run")]
    bench = ["--bench_dir", str(tmp_path / "data"), "--bench_name", "mini",
             "--judge_file", str(write_mini_bench(tmp_path / "data")), "--judge_cache", "none",
             "--judge_model_name", f"hf:{models['base']}"]
    commands = [(JGLUE, ["--target_model", str(models["target"])] + common),
                (MT_BENCH, ["--target_model", str(models["target"])] + common + bench),
                (MT_BENCH_MOE_2, ["--target_model_1", str(models["target"]), "--target_model_2",
                                  str(models["target2"])] + common + bench)]
    for spec, argv in commands:
        if any(flag in action.option_strings for action in spec.command_line.parser()._actions):
            return spec, argv
    raise AssertionError(f"no script takes {flag}")


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("flag", FLOAT_FLAGS)
def test_a_non_finite_float_flag_is_one_line_and_exit_2(models, tmp_path, capsys, flag, value):
    spec, argv = command_taking(flag, models, tmp_path)
    expect_usage_error(lambda a: run_pipeline(spec, a), argv + [f"{flag}={value}"], capsys, flag, repr(value), "finite")


@pytest.mark.parametrize("flag", ["--weight_max", "--judge_timeout"])
def test_a_float_flag_that_is_no_number_is_one_line_and_exit_2(models, tmp_path, capsys, flag):
    spec, argv = command_taking(flag, models, tmp_path)
    expect_usage_error(lambda a: run_pipeline(spec, a), argv + [flag, "two"], capsys, flag, "'two'", "not a number")
