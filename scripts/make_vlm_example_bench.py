"""Draw the example image bench (examples/vlm_bench): small PNGs of shapes, and Japanese questions about them.

Run once; the output is committed. Rerunning rewrites the same files."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent.parent / "examples" / "vlm_bench"
SIZE = 96
COLOURS = {"red": ((220, 30, 30), "赤"), "blue": ((30, 60, 220), "青"), "green": ((30, 160, 60), "緑"),
           "yellow": ((235, 200, 20), "黄色")}
SHAPES = {"circle": "丸", "square": "四角", "triangle": "三角"}


def draw(shape: str, colour: tuple[int, int, int], count: int) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    step = SIZE // count
    for i in range(count):
        left, top, side = i * step + 4, SIZE // 2 - step // 2 + 4, step - 8
        box = (left, top, left + side, top + side)
        if shape == "circle":
            pen.ellipse(box, fill=colour)
        elif shape == "square":
            pen.rectangle(box, fill=colour)
        else:
            pen.polygon([(left + side // 2, top), (left, top + side), (left + side, top + side)], fill=colour)
    return image


# (file stem, shape, colour, count, category, question, answer)
ITEMS = [
    ("red_circle", "circle", "red", 1, "colour", "この画像の図形は何色ですか？", "赤です。"),
    ("blue_square", "square", "blue", 1, "colour", "この図形の色を教えてください。", "青い色です。"),
    ("green_triangle", "triangle", "green", 1, "shape", "この画像に描かれている図形は何ですか？", "緑の三角です。"),
    ("yellow_circle", "circle", "yellow", 1, "shape", "この画像には何が描かれていますか？", "黄色い丸が描かれています。"),
    ("three_red_squares", "square", "red", 3, "count", "赤い四角はいくつありますか？", "三つあります。"),
    ("two_blue_circles", "circle", "blue", 2, "count", "青い丸はいくつありますか？", "二つあります。"),
    ("four_green_squares", "square", "green", 4, "count", "緑の四角は何個ありますか？", "四個あります。"),
    ("two_yellow_triangles", "triangle", "yellow", 2, "describe", "この画像を一文で説明してください。",
     "白い背景に黄色い三角が二つ並んでいます。"),
]


def main() -> None:
    (OUT / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for stem, shape, colour, count, category, question, answer in ITEMS:
        draw(shape, COLOURS[colour][0], count).save(OUT / "images" / f"{stem}.png", optimize=True)
        lines.append(json.dumps({"id": stem, "category": category, "image": f"images/{stem}.png",
                                 "question": question, "answer": answer}, ensure_ascii=False))
    (OUT / "bench.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
