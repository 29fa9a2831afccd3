"""The one reader of config.json (merging.models.read_config, on transformers' AutoConfig and get_text_config()):
the layer count under another field name (GPT-2's n_layer) and inside a VLM's text config, and one line naming the
flag for a config transformers cannot read."""
import json

import pytest
from transformers import GPT2Config, LlamaConfig, LlavaConfig

from task_vector_opt.cli.validation import decoder_layer_count
from task_vector_opt.errors import UsageError
from task_vector_opt.merging.models import read_config
from task_vector_opt.sources import ModelSource


def test_the_layer_count_is_read_under_any_field_name_and_from_a_vlms_text_config(tmp_path):
    GPT2Config(n_layer=3, n_embd=16, n_head=2).save_pretrained(tmp_path / "gpt2")
    text = LlamaConfig(num_hidden_layers=5, hidden_size=16, intermediate_size=32, num_attention_heads=2)
    LlavaConfig(text_config=text.to_dict()).save_pretrained(tmp_path / "llava")
    assert json.loads((tmp_path / "gpt2" / "config.json").read_text())["n_layer"] == 3  # not num_hidden_layers
    assert decoder_layer_count(ModelSource("--target_model", str(tmp_path / "gpt2")), None, False) == 3
    assert decoder_layer_count(ModelSource("--target_model", str(tmp_path / "llava")), None, False) == 5
    assert read_config(tmp_path / "llava").get_text_config().model_type == "llama"


def test_a_config_transformers_cannot_read_is_one_line_naming_the_flag(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(UsageError) as caught:
        read_config(tmp_path, flag="--base_model")
    assert caught.value.flag == "--base_model" and "--trust_remote_code" in str(caught.value)
    assert "\n" not in str(caught.value)
