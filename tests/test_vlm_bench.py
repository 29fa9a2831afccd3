"""The image-question bench: its JSONL layout, the shipped example, and ROUGE-L equal to the published evaluation's."""
import pytest

from task_vector_opt.evaluation.vlm_bench import DEFAULT_BENCH_FILE, JUDGE_SYSTEM, JapaneseRougeL, judge_request, \
    load_vlm_bench
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# ROUGE-L F x100 of each (reference, prediction) pair by the reference implementation: SakanaAI/evolutionary-model-merge
# evomerge/eval/metrics.py, rouge_ja(refs=[reference], preds=[prediction])["rougeL"] (commit c6a19da, the code behind
# the JA-VLM-Bench-In-the-Wild numbers of the paper), run with rouge-score 0.1.2, fugashi 1.5.2 + unidic-lite 1.0.8,
# neologdn 0.5.3 and emoji 2.14.0. For one pair its bootstrap aggregate is the pair's own score.
REFERENCE_SCORES = [
    ("赤い丸が一つあります。", "赤い丸が一つあります。", 100.0),
    ("赤い丸が一つあります。", "青い四角が二つあります。", 62.5),
    ("この写真には、桜の木の下で犬が寝ている様子が写っています。", "桜の下で犬が寝ています。", 64.70588235294117),
    ("ＡＢＣの看板が見えます！！", "ABCの看板が見えます!!", 100.0),
    ("猫が３匹いる😺", "猫が3匹います", 72.72727272727272),
    ("すごーーーーい景色ですね", "すごーい景色", 66.66666666666666),
    ("信号は青です", "The traffic light is green.", 0.0),
    ("右側に\u3000白い\u3000車が停まっています。", "白い車が右に停車中です✂", 33.33333333333333),
    ("東京タワーが夜にライトアップされています。", "ライトアップされた東京タワーが夜空に映えています。", 57.14285714285715),
    ("答えは「はい」です。", "", 0.0),
]


@pytest.fixture(scope="module")
def rouge():
    return JapaneseRougeL()


@pytest.mark.parametrize("reference, prediction, expected", REFERENCE_SCORES)
def test_rouge_l_equals_the_published_ja_vlm_bench_evaluation(rouge, reference, prediction, expected):
    assert rouge.score(reference, prediction) == pytest.approx(expected, abs=1e-9)


def test_rouge_l_tokenises_japanese_into_words_after_width_and_emoji_normalisation(rouge):
    assert rouge.tokenize("ＡＢＣの看板😺が見えます") == ["ABC", "の", "看板", "が", "見え", "ます"]


def test_the_shipped_example_bench_loads_with_its_images():
    items = load_vlm_bench(ROOT / DEFAULT_BENCH_FILE)
    assert len(items) == 8 and len({i.item_id for i in items}) == 8
    assert {i.category for i in items} == {"colour", "shape", "count", "describe"}
    assert all(i.image.is_file() and i.image.stat().st_size < 4096 for i in items)


def test_the_judge_sees_question_reference_and_answer_under_a_japanese_aware_rubric():
    item = load_vlm_bench(ROOT / DEFAULT_BENCH_FILE)[0]
    request = judge_request(item, "赤い丸です。")
    assert request.system == JUDGE_SYSTEM and "Japanese" in JUDGE_SYSTEM and "[[5]]" in JUDGE_SYSTEM
    assert item.question in request.user and item.answer in request.user and "赤い丸です。" in request.user
