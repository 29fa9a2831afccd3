"""--generation_backend vllm, checked without a GPU (benchmarks/gpu_check.sh runs the real engine).

* The names pushed into vLLM are the checkpoint names transformers saves, and vLLM's own load_weights rules
  (read from vLLM's source: tests/vllm_source.py) take every one of them to a module vLLM's model has.
* The flag's bad inputs: one line, exit 2, before any model loads.
* What our code sends to the engine: a recording stand-in for vLLM's LLM (the one test double here; vLLM itself
  needs a GPU) receives the pushes and the generation requests, from a real merger over a real tiny model.
"""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from task_vector_opt.cli.flags import run_cli
from task_vector_opt.cli.pipelines import MT_BENCH, run_pipeline
from task_vector_opt.errors import UsageError
from task_vector_opt.evaluation.bench.files import Question
from task_vector_opt.evaluation.finite import NonFiniteLogits
from task_vector_opt.evaluation.generation import row_seed, temperature_for
from task_vector_opt.evaluation.vllm_backend import VLLMAnswerGenerator, VLLMEngine, check_vllm_serves
from task_vector_opt.evaluation.vllm_names import checkpoint_tensors, slot_checkpoint_name
from task_vector_opt.merging.grouping import group_names
from task_vector_opt.merging.merger import Merger
from task_vector_opt.merging.moe.layout import moe_groups
from task_vector_opt.merging.task_vector import build_task_vector
from tiny_models import make_model, make_tokenizer, make_trio
from vlm_models import make_llava
import vllm_source


def tiny_mixtral(seed: int = 0):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    config = MixtralConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, num_local_experts=3, num_experts_per_tok=2)
    return MixtralForCausalLM(config)


def saved_like_transformers(model, tmp_path):
    model.save_pretrained(tmp_path)
    saved = {}
    for file in sorted(tmp_path.glob("*.safetensors")):
        saved.update(load_file(file))
    return saved


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "mixtral", "llava"])
def test_pushed_tensors_are_exactly_the_checkpoint_transformers_saves(arch, tmp_path):
    if arch == "mixtral":
        model = tiny_mixtral()
    elif arch == "llava":
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(make_llava(tmp_path / "llava"))
    else:
        model = make_model(arch, vocab_size=64)
    pushed = dict(checkpoint_tensors(model))
    saved = saved_like_transformers(model, tmp_path / "saved")
    assert sorted(pushed) == sorted(saved)
    for name, tensor in pushed.items():
        assert torch.equal(tensor, saved[name]), name


def vllm_rules(architecture: str, text_architecture: str | None = None):
    """name -> the modules vLLM's model lacks on that name's mapped path (see tests/vllm_source.py)."""
    try:
        path, cls = vllm_source.architecture_module(architecture)
    except vllm_source.VLLMSourceUnavailable as exc:
        pytest.skip(f"vLLM's source is absent here and its wheel cannot be downloaded: {exc}")
    mappers = [vllm_source.mapper_of(path, cls)]
    files = vllm_source.related_files(path)
    if text_architecture:  # a VLM: its language model is another registered vLLM model
        text_path, text_cls = vllm_source.architecture_module(text_architecture)
        mappers.append(vllm_source.mapper_of(text_path, text_cls))
        files += vllm_source.related_files(text_path)
    attributes = set().union(*(vllm_source.module_attributes(f) for f in files))
    experts = set().union(*(vllm_source.expert_checkpoint_names(f) for f in files))

    def unknown(name: str) -> list[str]:
        for mapper in mappers:
            name = mapper.map(name)
            assert name is not None, "vLLM's rules drop this tensor"
        return vllm_source.unknown_parts(name, attributes, experts)

    return unknown


@pytest.mark.parametrize("arch,architecture", [("llama", "LlamaForCausalLM"), ("mistral", "MistralForCausalLM"),
                                               ("qwen2", "Qwen2ForCausalLM")])
def test_vllm_load_weights_rules_place_every_dense_tensor_we_push(arch, architecture):
    unknown = vllm_rules(architecture)
    names = [name for name, _ in checkpoint_tensors(make_model(arch, vocab_size=64))]
    assert {name: unknown(name) for name in names if unknown(name)} == {}


def test_vllm_load_weights_rules_place_every_mixtral_tensor_and_moe_slot_we_push():
    unknown = vllm_rules("MixtralForCausalLM")
    model = tiny_mixtral()
    names = [name for name, _ in checkpoint_tensors(model)]
    assert any(".experts.2.w3." in n for n in names) and any("block_sparse_moe.gate" in n for n in names)
    dense_names = [n for n, _ in make_model("mistral", vocab_size=64).named_parameters()]
    names += [slot_checkpoint_name(key) for key in moe_groups(dense_names, 3, 0, "layer")]
    assert {name: unknown(name) for name in names if unknown(name)} == {}
    # The rules can refuse: transformers 5's in-memory names of the fused experts and the router are not
    # checkpoint names, and vLLM's Mixtral has no module under them.
    assert unknown("model.layers.0.mlp.experts.gate_up_proj.weight")
    assert unknown("model.layers.0.mlp.gate.weight")


def test_vllm_load_weights_rules_place_every_language_model_tensor_of_a_llava(tmp_path):
    from transformers import LlavaForConditionalGeneration

    unknown = vllm_rules("LlavaForConditionalGeneration", "LlamaForCausalLM")
    model = LlavaForConditionalGeneration.from_pretrained(make_llava(tmp_path / "llava"))
    names = [name for name, _ in checkpoint_tensors(model) if "language_model" in name or name.startswith("lm_head")]
    assert len(names) > 10
    assert {name: unknown(name) for name in names if unknown(name)} == {}


# ------------------------------------------------------------------------------------------------ bad input

@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    return make_trio(tmp_path_factory.mktemp("trio"), "llama")


def mt_bench_argv(trio, tmp_path):
    from mini_bench import write_mini_bench

    judge_file = write_mini_bench(tmp_path / "data")
    return ["--target_model", str(trio["target"]), "--base_model", str(trio["base"]), "--tuned_model",
            str(trio["tuned"]), "--output_dir", str(tmp_path / "out"), "--run_dir", str(tmp_path / "run"),
            "--bench_dir", str(tmp_path / "data"), "--bench_name", "mini", "--judge_file", str(judge_file),
            "--judge_cache", "none", "--judge_backend", "openai-compatible", "--judge_base_url",
            "http://127.0.0.1:9/v1", "--judge_model_name", "test-judge"]


def one_line_exit_2(argv, capsys, monkeypatch) -> str:
    from task_vector_opt import engine

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(engine, "load_model", refuse)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda a: run_pipeline(MT_BENCH, a), argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_vllm_backend_without_vllm_installed_is_one_line_naming_the_fix(trio, tmp_path, capsys, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")  # CI and the developers' machines have none
    err = one_line_exit_2(mt_bench_argv(trio, tmp_path) + ["--generation_backend", "vllm"], capsys, monkeypatch)
    assert "--generation_backend" in err and "not installed" in err and ".[vllm]" in err, err


def test_vllm_backend_dry_run_is_refused_too(trio, tmp_path, capsys, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    err = one_line_exit_2(mt_bench_argv(trio, tmp_path) + ["--generation_backend", "vllm", "--dry_run"], capsys,
                          monkeypatch)
    assert "--generation_backend" in err, err


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2"])
def test_vllm_memory_share_outside_0_1_is_refused(trio, tmp_path, capsys, monkeypatch, value):
    err = one_line_exit_2(mt_bench_argv(trio, tmp_path) + ["--generation_backend", "vllm",
                                                           "--vllm_gpu_memory_utilization", value], capsys, monkeypatch)
    assert "--vllm_gpu_memory_utilization" in err and "between 0 and 1" in err, err


def test_unknown_generation_backend_is_refused(trio, tmp_path, capsys, monkeypatch):
    err = one_line_exit_2(mt_bench_argv(trio, tmp_path) + ["--generation_backend", "tgi"], capsys, monkeypatch)
    assert "--generation_backend" in err and "tgi" in err, err


def test_an_architecture_vllm_does_not_serve_is_named(trio):
    architectures = json.loads((trio["target"] / "config.json").read_text())["architectures"]
    with pytest.raises(UsageError) as info:
        check_vllm_serves(architectures, "--target_model 'x'", served={"MixtralForCausalLM"})
    assert "--generation_backend" in str(info.value) and architectures[0] in str(info.value)
    check_vllm_serves(architectures, "--target_model 'x'", served={architectures[0]})


def test_hf_backend_keeps_the_study_name_and_vllm_changes_it(trio, tmp_path, monkeypatch):
    from task_vector_opt.cli.flags import parse_namespace
    from task_vector_opt.cli.validation import build_config
    from task_vector_opt.evaluation.mt_bench import mt_bench_settings_from_args

    argv = mt_bench_argv(trio, tmp_path)
    names = []
    for extra in ([], ["--generation_backend", "hf"], ["--generation_backend", "vllm"]):
        args = parse_namespace(MT_BENCH.command_line, argv + extra)
        settings = mt_bench_settings_from_args(args)
        identity = build_config("mt_bench", args, [MT_BENCH.targets_from_args(args)[0]], settings).study_identity()
        names.append(json.dumps(identity, sort_keys=True))
    assert names[0] == names[1] and "generation_backend" not in names[0]
    assert names[2] != names[0] and '"generation_backend": "vllm"' in names[2]


# ------------------------------------------------------------------------------ what our code sends to vLLM

class RecordingLLM:
    """Stands in for vLLM's LLM: runs the pushed function on a worker whose model records what it is given,
    and answers each prompt with fixed token ids. Records the prefix cache resets and the sampling params."""

    def __init__(self, answer_ids):
        self.pushes: list[list[str]] = []
        self.resets = 0
        self.requests: list[tuple[list, list]] = []
        self.answer_ids = answer_ids
        outer = self

        class Model:
            def load_weights(self, weights):
                outer.pushes.append([name for name, _ in weights])
                return {name for name, _ in weights}

            def named_parameters(self):
                return iter(())

        self.worker = type("Worker", (), {"model_runner": type("Runner", (), {"model": Model()})()})()

    def collective_rpc(self, method, args=()):
        return [method(self.worker, *args)]

    def reset_prefix_cache(self):
        self.resets += 1

    def generate(self, prompts, sampling_params, use_tqdm):
        self.requests.append((prompts, sampling_params))
        output = type("Completion", (), {"token_ids": self.answer_ids})
        return [type("RequestOutput", (), {"outputs": [output]}) for _ in prompts]


@pytest.fixture
def merged_llama(tmp_path):
    paths = make_trio(tmp_path, "llama")
    model = AutoModelForCausalLM.from_pretrained(paths["target"], dtype=torch.float32).eval()
    vector = build_task_vector(model, paths["base"], paths["tuned"], dtype=torch.float32, store_device="cpu")
    merger = Merger(model, vector, group_names(list(vector), "layer"), "cpu")
    return model, merger


def engine_with(llm, merger) -> VLLMEngine:
    engine = VLLMEngine(0.4, start=lambda folder, dtype, utilization, trust: llm, sampling_params=lambda: dict)
    engine.follow(merger)
    return engine


def test_each_merge_pushes_only_the_tensors_it_rewrote_and_resets_the_prefix_cache(merged_llama):
    model, merger = merged_llama
    tokenizer = make_tokenizer(256)
    llm = RecordingLLM([5, 6, tokenizer.eos_token_id, 7])
    generator = VLLMAnswerGenerator(tokenizer, engine_with(llm, merger), max_new_tokens=4)
    question = [Question("q1", "writing", ["Hi", "And?"])]
    ones = dict.fromkeys(merger.weight_names(), 1.0)

    generator.generate(model, question)  # start: every live tensor, once
    assert [sorted(push) for push in llm.pushes] == [sorted(n for n, _ in model.named_parameters())]
    assert llm.resets == 1
    merger.apply(ones)
    generator.generate(model, question)
    assert sorted(llm.pushes[1]) == sorted(merger.params) and llm.resets == 2
    merger.apply({**ones, "layer_01": 0.5})
    generator.generate(model, question)
    assert llm.pushes[2] and all(".layers.1." in name for name in llm.pushes[2]), llm.pushes[2]
    assert sorted(llm.pushes[2]) == sorted(n for n in merger.params if ".layers.1." in n)
    generator.generate(model, question)  # no merge in between: nothing to push, the cache stays
    assert len(llm.pushes) == 3 and llm.resets == 3


def test_vllm_requests_carry_the_hf_paths_prompts_temperatures_and_stops(merged_llama):
    model, merger = merged_llama
    tokenizer = make_tokenizer(256)
    llm = RecordingLLM([5, 6, tokenizer.eos_token_id, 7])
    generator = VLLMAnswerGenerator(tokenizer, engine_with(llm, merger), max_new_tokens=4, seed=3)
    questions = [Question("m1", "math", ["2+2?", "Times 3?"]), Question("w1", "writing", ["A poem", "Shorter"])]
    answers = generator.generate(model, questions)
    assert answers == [[generator._decode([5, 6], [tokenizer.eos_token_id])] * 2] * 2
    prompts, params = llm.requests[0]
    assert [p["prompt_token_ids"] for p in prompts] == [generator.prompt_ids(q, []) for q in questions]
    assert temperature_for("math") == 0.0 and params[0]["temperature"] == 0.0 and "seed" not in params[0]
    assert params[1]["temperature"] == temperature_for("writing") > 0
    assert params[1]["top_k"] == 50 and params[1]["seed"] == row_seed(3, "w1", 0)
    assert all(p["max_tokens"] == 4 and tokenizer.eos_token_id in p["stop_token_ids"] for p in params)
    turn_two, _ = llm.requests[1]  # turn 2's prompt holds the model's own first answer
    assert turn_two[0]["prompt_token_ids"] == generator.prompt_ids(questions[0], answers[0][:1])


def test_a_merge_with_non_finite_tensors_fails_instead_of_being_pushed(merged_llama):
    model, merger = merged_llama
    tokenizer = make_tokenizer(256)
    llm = RecordingLLM([tokenizer.eos_token_id])
    generator = VLLMAnswerGenerator(tokenizer, engine_with(llm, merger), max_new_tokens=2)
    question = [Question("q1", "math", ["Hi"])]
    generator.generate(model, question)
    merger.apply({**dict.fromkeys(merger.weight_names(), 0.0), "layer_00": float("inf")})
    with pytest.raises(NonFiniteLogits, match="layers.0"):
        generator.generate(model, question)
    assert len(llm.pushes) == 1  # nothing reached the engine
    merger.apply(dict.fromkeys(merger.weight_names(), 0.0))
    generator.generate(model, question)  # the restore is pushed: layer 0 changed since the last push
    assert sorted(llm.pushes[1]) == sorted(n for n in merger.params if ".layers.0." in n)
