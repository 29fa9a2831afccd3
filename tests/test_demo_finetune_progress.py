"""The demo's fine-tunes say what they build: one line per model (what, on which data, epochs and steps, where it
is cached), a progress bar over the steps, and on a second run one line that the cached model is used."""
import logging

from task_vector_opt.demo import finetune
from task_vector_opt.demo.finetune import FinetuneSettings, build_finetuned
from tiny_models import make_model, make_tokenizer, save

SETTINGS = FinetuneSettings(epochs=2, lr=1e-3, batch_size=4, seed=0)
PAIRS = [(f"word{i}=", f" {'ABCD'[i % 4]}") for i in range(10)]  # 10 examples: 3 steps per epoch (4 + 4 + 2)


def test_a_finetune_says_what_it_builds_shows_its_steps_and_then_uses_the_cache(tmp_path, caplog, capsys):
    base = save(make_model("llama", vocab_size=256), make_tokenizer(256), tmp_path / "tiny-base")
    data_file = tmp_path / "pairs.jsonl"
    data_file.write_text("the cache key hashes this file\n")
    cache = tmp_path / "cache"

    with caplog.at_level(logging.INFO, logger=finetune.__name__):
        built = build_finetuned(base, cache, "tuned", data_file, PAIRS, SETTINGS)
    lines = [r.getMessage() for r in caplog.records if r.name == finetune.__name__]
    assert len(lines) == 2, lines
    announce, finished = lines
    for part in ("'tuned'", "fine-tuning tiny-base", "10 examples of pairs.jsonl", "2 epochs = 6 steps of 4",
                 f"cached in {built} afterwards"):
        assert part in announce, announce
    assert "6 steps in" in finished and "loss" in finished
    bar = capsys.readouterr().err
    assert "fine-tune tuned" in bar and "6/6" in bar  # tqdm's bar, run to its end
    assert (built / "model.safetensors").is_file()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger=finetune.__name__):
        again = build_finetuned(base, cache, "tuned", data_file, PAIRS, SETTINGS)
    assert again == built
    assert [r.getMessage() for r in caplog.records if r.name == finetune.__name__] == [
        f"demo model 'tuned': fine-tuned before, cached in {built}"]
    assert "fine-tune tuned" not in capsys.readouterr().err  # no second fine-tune


def test_steps_count_the_last_partial_batch_of_every_epoch():
    assert finetune.steps_of(10, SETTINGS) == 6
    assert finetune.steps_of(8, SETTINGS) == 4
