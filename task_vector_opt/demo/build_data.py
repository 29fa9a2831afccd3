"""Regenerate the demo's shipped data files (run by hand; the outputs are committed).

    python -m task_vector_opt.demo.build_data

The skill ("demo_skill"): give an English word its group code, one of A B C D
("分類 tiger：" -> " C"), where the code depends only on the word's semantic
category (animal / food / occupation / country). The category-to-code mapping is
arbitrary, so a model that was never taught it sits at chance (25 %,
the eval set is balanced), while a short fine-tune teaches a rule that carries
over to words it never saw: the training words and the eval words are disjoint.

The target's fine-tune ("demo_target") is a different skill on a different
topic: two-number addition written with a Japanese prompt.

The target's skill is scored too ("demo_target": pick the right sum among four
close numbers), so a merge shows what the tuned vector costs the target's own skill.

The steep testbed's conflicting skill ("demo_skill_steep"): the same words and split as the skill, asked
behind the target's own prompt shape ("計算：tiger=" -> " D") with the codes rotated by one (see skill.py).
A heavy fine-tune on it answers codes where the target answers sums.

Outputs (all deterministic):
  task_vector_opt/demo/data/skill_train.jsonl     fine-tune set for "tuned"
  task_vector_opt/demo/data/target_train.jsonl    fine-tune set for "target"
  lm-evaluation-harness/demo/demo_skill_test.jsonl  held-out eval words, shuffled
  lm-evaluation-harness/demo/demo_target_test.jsonl held-out sums (pairs not in the target's training set)
  task_vector_opt/demo/data/conflict_train.jsonl  fine-tune set for "conflict" (the skill's training words)
  lm-evaluation-harness/demo/demo_skill_steep_test.jsonl  held-out words of the conflicting skill
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from task_vector_opt.demo.skill import CATEGORIES, TARGET_PROMPT, conflict_label, conflict_prompt, skill_prompt

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(__file__).resolve().parent / "data"
EVAL_DIR = REPO_ROOT / "lm-evaluation-harness" / "demo"

TRAIN_PER_CATEGORY = 50
SEED = 20240611

# Words were picked to belong clearly to one category: no "turkey", "chicken",
# "salmon", "orange", "china", "jordan", "cook"... Everything is lower case so
# that capitalisation cannot give countries away.
WORDS: dict[str, list[str]] = {
    "animal": """
        dog cat horse cow pig sheep goat rabbit mouse rat hamster squirrel deer moose
        bear wolf fox lion tiger leopard cheetah panther cougar lynx hyena zebra giraffe
        elephant rhinoceros hippopotamus camel llama alpaca donkey mule buffalo bison yak
        antelope gazelle kangaroo koala wombat platypus panda raccoon skunk badger otter
        beaver weasel ferret mole hedgehog porcupine armadillo sloth anteater monkey
        gorilla chimpanzee orangutan baboon lemur bat whale dolphin seal walrus shark
        octopus jellyfish starfish eagle hawk falcon owl parrot pigeon sparrow crow raven
        robin swan goose penguin ostrich flamingo peacock pelican seagull woodpecker
        hummingbird vulture stork heron frog toad salamander newt lizard snake cobra
        crocodile alligator turtle tortoise iguana chameleon gecko butterfly moth bee wasp
        ant beetle ladybug mosquito spider scorpion grasshopper dragonfly caterpillar
        worm snail termite cockroach flea hornet firefly reindeer mongoose meerkat
        chinchilla gerbil opossum jackal coyote warthog tapir manatee narwhal orca seahorse
        stingray piranha beluga puffin albatross kingfisher cockatoo canary toucan emu
        condor magpie gibbon hare pony wildebeest ocelot shrew chipmunk capybara axolotl
        goldfish
    """.split(),
    "food": """
        bread rice pasta spaghetti pizza hamburger sandwich soup salad cheese butter yogurt
        apple banana grape strawberry cherry peach pear plum lemon mango pineapple
        watermelon melon blueberry raspberry apricot coconut papaya avocado fig pomegranate
        grapefruit tangerine carrot potato tomato onion garlic cabbage lettuce spinach
        broccoli cauliflower cucumber pumpkin eggplant celery asparagus radish mushroom
        corn bean zucchini beet turnip yam sausage bacon ham steak meatball burrito taco
        sushi ramen udon tempura dumpling omelette pancake waffle croissant bagel muffin
        cookie biscuit cake pie donut brownie cupcake pudding chocolate candy caramel honey
        jam ketchup mayonnaise mustard vinegar cereal oatmeal granola popcorn pretzel
        cracker toast tofu miso kimchi curry stew lasagna ravioli risotto paella quiche
        falafel hummus kebab gyoza onigiri mochi tiramisu cheesecake custard sorbet gelato
        lollipop marshmallow toffee porridge couscous quinoa lentil chickpea almond walnut
        peanut cashew pistachio hazelnut raisin olive pickle salami pepperoni meatloaf
        coleslaw guacamole nachos enchilada baguette brioche scone crepe strudel baklava
        macaron egg tortilla macaroni noodle
    """.split(),
    "occupation": """
        doctor nurse teacher lawyer engineer farmer pilot chef baker butcher carpenter
        plumber electrician mechanic firefighter policeman soldier sailor dentist
        pharmacist surgeon veterinarian architect accountant banker cashier waiter
        waitress barber hairdresser tailor sculptor musician singer dancer actor actress
        writer author poet journalist editor photographer programmer scientist chemist
        physicist biologist astronaut astronomer librarian professor judge secretary
        receptionist janitor gardener fisherman miner blacksmith locksmith welder
        chauffeur courier mailman postman clerk manager salesman translator interpreter
        detective lifeguard paramedic psychologist therapist optician surveyor economist
        historian mathematician geologist archaeologist jeweler florist grocer shepherd
        rancher lumberjack beekeeper zookeeper housekeeper nanny babysitter tutor coach
        referee umpire comedian magician clown cartoonist illustrator designer composer
        pianist violinist drummer guitarist novelist reporter diplomat ambassador senator
        mayor governor politician priest monk nun missionary dietitian midwife
        radiologist cardiologist pediatrician dermatologist auditor analyst consultant
        entrepreneur realtor stockbroker bartender barista sommelier plasterer roofer
        bricklayer shoemaker watchmaker seamstress weaver technician machinist archivist
        curator paralegal notary bailiff sheriff forester trucker stewardess
    """.split(),
    "country": """
        japan korea india pakistan bangladesh nepal bhutan thailand vietnam cambodia laos
        myanmar malaysia singapore indonesia philippines mongolia kazakhstan uzbekistan
        afghanistan iran iraq syria lebanon israel yemen oman qatar kuwait bahrain egypt
        libya tunisia algeria morocco sudan ethiopia somalia kenya uganda tanzania rwanda
        nigeria ghana senegal mali niger cameroon angola zambia zimbabwe mozambique
        madagascar botswana namibia congo gabon liberia benin togo malawi eritrea djibouti
        burundi lesotho mauritania gambia france germany italy spain portugal greece
        norway sweden finland denmark iceland ireland netherlands belgium luxembourg
        switzerland austria poland hungary romania bulgaria serbia croatia slovenia
        slovakia ukraine belarus russia estonia latvia lithuania moldova albania
        montenegro bosnia kosovo malta cyprus monaco andorra liechtenstein canada mexico
        guatemala honduras nicaragua panama cuba jamaica haiti bahamas barbados brazil
        argentina chile peru colombia venezuela ecuador bolivia paraguay uruguay suriname
        guyana australia fiji samoa tonga vanuatu armenia azerbaijan tajikistan
        kyrgyzstan turkmenistan taiwan brunei maldives nauru kiribati tuvalu palau belize
        grenada
    """.split(),
}


def _check_words() -> None:
    seen: dict[str, str] = {}
    for category, words in WORDS.items():
        assert category in CATEGORIES, category
        for word in words:
            if word in seen:
                raise ValueError(f"{word!r} listed twice ({seen[word]}, {category})")
            seen[word] = category


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_skill_splits() -> tuple[list[dict], list[dict]]:
    """Split every category's words into train / eval; eval is balanced and shuffled."""
    _check_words()
    rng = random.Random(SEED)
    train, evals = [], []
    per_category_eval = min(len(w) for w in WORDS.values()) - TRAIN_PER_CATEGORY
    for category, words in WORDS.items():
        words = sorted(words)
        rng.shuffle(words)
        label = CATEGORIES.index(category)
        for word in words[:TRAIN_PER_CATEGORY]:
            train.append({"word": word, "category": category, "label": label})
        for word in words[TRAIN_PER_CATEGORY:TRAIN_PER_CATEGORY + per_category_eval]:
            evals.append({"word": word, "category": category, "label": label})
    rng.shuffle(train)
    rng.shuffle(evals)
    for row in train + evals:
        row["prompt"] = skill_prompt(row["word"])
    return train, evals


def build_target_train(n: int = 240) -> list[dict]:
    """Two-number addition with a Japanese prompt: a skill unrelated to the word codes."""
    rng = random.Random(SEED + 1)
    rows, seen = [], set()
    while len(rows) < n:
        a, b = rng.randint(1, 49), rng.randint(1, 49)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        rows.append({"prompt": TARGET_PROMPT.format(a=a, b=b), "answer": str(a + b)})
    return rows


TARGET_EVAL_SIZE = 400
DISTRACTOR_OFFSETS = (-10, -2, -1, 1, 2, 10)  # wrong sums a model that half-knows addition confuses


def build_target_eval(train: list[dict], n: int = TARGET_EVAL_SIZE) -> list[dict]:
    """Addition pairs the target never trained on, each with the right sum and three close wrong ones."""
    rng = random.Random(SEED + 2)
    trained = {row["prompt"] for row in train}
    rows, seen = [], set()
    while len(rows) < n:
        a, b = rng.randint(1, 49), rng.randint(1, 49)
        prompt = TARGET_PROMPT.format(a=a, b=b)
        if prompt in trained or (a, b) in seen:
            continue
        seen.add((a, b))
        total = a + b
        wrong = rng.sample([total + d for d in DISTRACTOR_OFFSETS if total + d > 0], 3)
        choices = [str(total)] + [str(x) for x in wrong]
        rng.shuffle(choices)
        rows.append({"prompt": prompt, "choices": choices, "label": choices.index(str(total))})
    return rows


def build_conflict_splits() -> tuple[list[dict], list[dict]]:
    """The skill's train / eval words in the same order, asked behind the target's prompt with rotated codes."""
    train, evals = build_skill_splits()

    def convert(row: dict) -> dict:
        return {"word": row["word"], "category": row["category"], "label": conflict_label(row["category"]),
                "prompt": conflict_prompt(row["word"])}

    return [convert(row) for row in train], [convert(row) for row in evals]


def main() -> None:
    train, evals = build_skill_splits()
    target_train = build_target_train()
    _write_jsonl(DATA_DIR / "skill_train.jsonl", train)
    _write_jsonl(DATA_DIR / "target_train.jsonl", target_train)
    _write_jsonl(EVAL_DIR / "demo_skill_test.jsonl", evals)
    target_eval = build_target_eval(target_train)
    _write_jsonl(EVAL_DIR / "demo_target_test.jsonl", target_eval)
    conflict_train, conflict_evals = build_conflict_splits()
    _write_jsonl(DATA_DIR / "conflict_train.jsonl", conflict_train)
    _write_jsonl(EVAL_DIR / "demo_skill_steep_test.jsonl", conflict_evals)
    print(f"conflict train {len(conflict_train)}, eval {len(conflict_evals)}")
    print(f"skill train {len(train)}, eval {len(evals)}; target train {len(target_train)}, eval {len(target_eval)}")


if __name__ == "__main__":
    main()
