"""The Evaluator base declares every hook the engine calls (score, holdout, describe, follow, the pruner), and
evaluator settings declare what memory placement asks of them: the engine and the merger never ask an evaluator
what it has."""
from pathlib import Path

import pytest

from task_vector_opt import engine
from task_vector_opt.cli.flags import parse_namespace
from task_vector_opt.cli.pipelines import JGLUE, VLM
from task_vector_opt.cli.validation import validate
from task_vector_opt.evaluation.jglue import JGLUEEvaluator, JGLUESettings
from task_vector_opt.evaluation.mt_bench import MTBenchEvaluator, MTBenchSettings
from task_vector_opt.evaluation.protocol import Evaluator, EvaluatorSettings, Score
from task_vector_opt.evaluation.vlm_bench import VLMBenchEvaluator, VLMBenchSettings, vlm_bench_settings_from_args
from task_vector_opt.merging.merger import Merger, gpu_share
from tiny_models import make_trio

DEMO_TASKS = Path(__file__).resolve().parent.parent / "lm-evaluation-harness" / "demo"


class WeightSum(Evaluator):
    """Only what a scorer must define, plus a record of the merger the engine hands to ``follow``."""

    def __init__(self):
        self.followed = []

    def score(self, model, tokenizer, trial=None) -> Score:
        return Score(float(sum(p.double().sum() for p in model.parameters())))

    def describe(self) -> str:
        return "sum of the weights"

    def follow(self, merger) -> None:
        self.followed.append(merger)


def test_an_evaluator_without_score_or_describe_cannot_be_made():
    class NoScore(Evaluator):
        def describe(self) -> str:
            return "nothing"

    class NoDescription(Evaluator):
        def score(self, model, tokenizer, trial=None) -> Score:
            return Score(0.0)

    for incomplete in (NoScore, NoDescription):
        with pytest.raises(TypeError, match="abstract"):
            incomplete()


def test_the_defaults_are_no_pruner_no_holdout_and_a_follow_that_does_nothing():
    class Minimal(Evaluator):
        def score(self, model, tokenizer, trial=None) -> Score:
            return Score(1.0)

        def describe(self) -> str:
            return "one"

    minimal = Minimal()
    assert minimal.pruner is None and minimal.holdout(None, None) is None and minimal.follow(object()) is None


def test_the_engine_hands_the_runs_merger_to_follow_once_before_the_search(tmp_path):
    trio = make_trio(tmp_path / "models", "llama")
    args = parse_namespace(JGLUE.command_line, [
        "--target_model", str(trio["target"]), "--base_model", str(trio["base"]), "--tuned_model", str(trio["tuned"]),
        "--dtype", "float32", "--device", "cpu", "--optimize_mode", "all", "--n_trials", "2",
        "--run_dir", str(tmp_path / "run"), "--output_dir", str(tmp_path / "out"), "--jglue_tasks", "demo_skill",
        "--task_search_path", str(DEMO_TASKS)])
    evaluator = WeightSum()
    result = engine.run(validate(JGLUE, args), lambda config: evaluator)
    assert len(evaluator.followed) == 1 and isinstance(evaluator.followed[0], Merger)
    assert result.best_value is not None and (tmp_path / "out" / "merge_recipe.json").is_file()


def test_every_scorer_and_its_settings_build_on_the_bases():
    for evaluator in (JGLUEEvaluator, MTBenchEvaluator, VLMBenchEvaluator):
        assert issubclass(evaluator, Evaluator)
    for settings in (JGLUESettings, MTBenchSettings, VLMBenchSettings):
        assert issubclass(settings, EvaluatorSettings)


@pytest.mark.parametrize("flags, share", [
    (["--generation_backend", "vllm", "--vllm_gpu_memory_utilization", "0.3"], 0.3),
    (["--generation_backend", "vllm"], 0.5),
    ([], 0.0),
])
def test_memory_placement_leaves_free_only_the_share_a_vllm_backend_takes(flags, share):
    settings = vlm_bench_settings_from_args(VLM.command_line.parser().parse_args(flags))
    assert settings.gpu_memory_share() == share and gpu_share(settings) == share


def test_settings_without_an_answering_backend_and_no_settings_leave_the_whole_gpu():
    assert EvaluatorSettings().gpu_memory_share() == 0.0 and gpu_share(None) == 0.0
