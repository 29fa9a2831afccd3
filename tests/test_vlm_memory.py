"""The VLM memory rule (docs/en/hardware.md, 'VLM memory'), as a pure function on the real shapes of LLaVA-1.5-7B."""
import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from task_vector_opt.merging.vlm import checkpoint_name, memory_plan

GIB = 2**30
GPU_24GB = 24 * GIB


@pytest.fixture(scope="module")
def llava_7b_bytes():
    """(whole model, language model) bytes of llava-hf/llava-1.5-7b-hf in bfloat16, counted on the meta device."""
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text,
                                                          image_token_index=32000))
    named = dict(model.named_parameters())
    total = sum(p.numel() for p in named.values()) * 2
    language = sum(p.numel() for n, p in named.items() if checkpoint_name(n) is not None) * 2
    return total, language


def test_llava_7b_counts_about_7_1b_parameters_of_which_6_7b_are_the_language_model(llava_7b_bytes):
    total, language = llava_7b_bytes
    assert 7.0e9 < total / 2 < 7.1e9 and 6.7e9 < language / 2 < 6.8e9


def test_llava_7b_with_its_vector_on_the_device_does_not_fit_one_24gb_gpu(llava_7b_bytes):
    plan = memory_plan(*llava_7b_bytes, copies_on_device=True)
    assert 38 * GIB < plan.device_bytes < 39 * GIB and plan.host_bytes == 0
    assert not plan.fits(GPU_24GB)


def test_llava_7b_with_vector_placement_cpu_fits_one_24gb_gpu_and_keeps_25gib_on_the_host(llava_7b_bytes):
    total, language = llava_7b_bytes
    plan = memory_plan(total, language, copies_on_device=False)
    assert plan.device_bytes == total and plan.fits(GPU_24GB)
    assert 16 * GIB < plan.device_bytes + plan.reserve_bytes < 17 * GIB
    assert 25 * GIB < plan.host_bytes < 25.3 * GIB


def test_the_vision_tower_is_never_copied(llava_7b_bytes):
    total, language = llava_7b_bytes
    as_if_all_merged = memory_plan(total, total, copies_on_device=True)
    assert memory_plan(total, language, True).device_bytes == as_if_all_merged.device_bytes - 2 * (total - language)
