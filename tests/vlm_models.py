"""Tiny random vision-language models built from configs (LLaVA with a CLIP tower, Qwen2-VL), with processors.

Their language models have the shapes of tiny_models.make_model(arch, hidden=32, layers=2), so tiny_models'
base/tuned LLMs make their task vectors. The VLM vocabulary has extra image tokens, as real VLMs have.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tiny_models import make_config, make_tokenizer

HIDDEN = 32
LAYERS = 2
IMAGE_SIZE = 28
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>"
                 "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
                 "{% if c['type'] == 'image' %}{IMAGE}{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _randomize(model, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.05)


def make_llava(directory: Path, vocab_size: int = 256, seed: int = 5, text_arch: str = "llama") -> Path:
    """A LLaVA-1.5-style VLM: CLIP vision tower (28 px, 14 px patches), 2-layer MLP projector, Llama LM."""
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)

    tokenizer = make_tokenizer(vocab_size)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    text = make_config(text_arch, vocab_size=len(tokenizer), layers=LAYERS, hidden=HIDDEN)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=IMAGE_SIZE, patch_size=14, projection_dim=16)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token,
                         vision_feature_layer=-1, vision_feature_select_strategy="default")
    config.text_config.pad_token_id = tokenizer.pad_token_id
    model = LlavaForConditionalGeneration(config)
    _randomize(model, seed)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE.replace("{IMAGE}", "<image>"))
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def make_qwen2_vl(directory: Path, vocab_size: int = 256, seed: int = 6, processor: bool = False) -> Path:
    """A Qwen2-VL-style VLM: a 1-block vision transformer with 2x2 patch merging, Qwen2 LM. With processor=True it
    is saved with the real Qwen2VLProcessor, which needs torchvision (its video processor): the tests marked vision,
    which scripts/test.sh runs in .venv-vision. Without, the tokenizer and the image processor are saved on their
    own, enough to load and merge the model where torchvision is missing."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    tokenizer = make_tokenizer(vocab_size)
    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}
    text = make_config("qwen2", vocab_size=len(tokenizer), layers=LAYERS, hidden=HIDDEN).to_dict()
    text.update(rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}, model_type="qwen2_vl_text")
    config = Qwen2VLConfig(text_config=text, vision_config=dict(depth=1, embed_dim=16, hidden_size=HIDDEN,
                                                                num_heads=2, mlp_ratio=2, patch_size=14,
                                                                spatial_merge_size=2, temporal_patch_size=2),
                           image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                           vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    model = Qwen2VLForConditionalGeneration(config)
    _randomize(model, seed)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=IMAGE_SIZE * IMAGE_SIZE, max_pixels=IMAGE_SIZE * IMAGE_SIZE,
                                            patch_size=14, merge_size=2, temporal_patch_size=2)
    chat_template = CHAT_TEMPLATE.replace("{IMAGE}", "<|vision_start|><|image_pad|><|vision_end|>")
    model.save_pretrained(directory)
    if processor:
        from transformers import Qwen2VLProcessor, Qwen2VLVideoProcessor

        video_processor = Qwen2VLVideoProcessor(min_pixels=IMAGE_SIZE * IMAGE_SIZE, max_pixels=IMAGE_SIZE * IMAGE_SIZE,
                                                patch_size=14, merge_size=2, temporal_patch_size=2)
        Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                         chat_template=chat_template).save_pretrained(directory)
        return directory
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(directory)
    image_processor.save_pretrained(directory)
    return directory
