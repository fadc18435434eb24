"""Synthetic scenes (a few coloured shapes at random places on a plain background) and
questions whose answers depend on part of the image: what the demo model is trained and
evaluated on. Everything is a function of a seed, so a scene is reproducible anywhere.

    scene = make_scene(seed)          # shapes and places
    image = draw(scene)               # a PIL image
    question, answer, kind = ask(scene, seed)

The three question kinds: "Is there a red circle?" (yes / no), "What colour is the
square?" (the scene has exactly one), "How many triangles are there?" (0 to 3).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 336  # LLaVA-1.5's input: the image processor leaves a 336x336 image as it is
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")
KINDS = ("exists", "colour", "count")
BACKGROUND = (245, 245, 245)
MIN_SHAPES, MAX_SHAPES = 1, 3
MIN_SIDE, MAX_SIDE = 84, 126  # pixels: 3 to 4.5 patches of 28


@dataclass(frozen=True)
class Shape:
    kind: str  # circle / square / triangle
    colour: str
    box: tuple[int, int, int, int]  # left, top, right, bottom


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]

    def count(self, kind: str, colour: str | None = None) -> int:
        return sum(s.kind == kind and colour in (None, s.colour) for s in self.shapes)


def make_scene(seed: int) -> Scene:
    rng = random.Random(seed)
    shapes: list[Shape] = []
    for _ in range(rng.randint(MIN_SHAPES, MAX_SHAPES)):
        for _attempt in range(100):  # non-overlapping places, with a margin
            side = rng.randint(MIN_SIDE, MAX_SIDE)
            left, top = rng.randint(4, SIZE - side - 4), rng.randint(4, SIZE - side - 4)
            box = (left, top, left + side, top + side)
            if all(_apart(box, other.box, 8) for other in shapes):
                shapes.append(Shape(rng.choice(SHAPES), rng.choice(list(COLOURS)), box))
                break
    return Scene(tuple(shapes))


def _apart(a, b, margin: int) -> bool:
    return a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]


def draw(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    _paint(ImageDraw.Draw(image), scene, lambda shape: COLOURS[shape.colour])
    return image


def label_map(scene: Scene) -> Image.Image:
    """Per pixel, 0 for background or 1 + the index of the shape's (colour, kind) among
    the 12: what the demo model's vision tower is also taught to say of each patch."""
    labels = Image.new("L", (SIZE, SIZE), 0)
    _paint(ImageDraw.Draw(labels), scene, lambda shape: 1 + list(COLOURS).index(shape.colour) * 3 + SHAPES.index(shape.kind))
    return labels


def _paint(pen: ImageDraw.ImageDraw, scene: Scene, fill) -> None:
    for shape in scene.shapes:
        left, top, right, bottom = shape.box
        if shape.kind == "circle":
            pen.ellipse(shape.box, fill=fill(shape))
        elif shape.kind == "square":
            pen.rectangle(shape.box, fill=fill(shape))
        else:
            pen.polygon([((left + right) // 2, top), (right, bottom), (left, bottom)], fill=fill(shape))


def ask(scene: Scene, seed: int, kind: str | None = None) -> tuple[str, str, str] | None:
    """(question, answer, answer type) about ``scene``; kind None draws one from the seed.
    None when the scene cannot answer that kind (a colour question needs a shape that
    occurs exactly once)."""
    rng = random.Random(seed * 7919 + 1)
    drawn = rng.choice(KINDS)  # drawn even when kind is given, so what follows is independent of it
    kind = kind or drawn
    if kind == "exists":  # half yes, half no
        present = sorted({(s.colour, s.kind) for s in scene.shapes})
        absent = [(c, k) for c in COLOURS for k in SHAPES if (c, k) not in present]
        colour, shape = rng.choice(present if rng.random() < 0.5 else absent)
        return f"Is there a {colour} {shape}?", "yes" if scene.count(shape, colour) else "no", "yesno"
    if kind == "colour":
        single = [k for k in SHAPES if scene.count(k) == 1]
        if not single:
            return None
        shape = rng.choice(single)
        (colour,) = [s.colour for s in scene.shapes if s.kind == shape]
        return f"What colour is the {shape}?", colour, "short"
    shape = rng.choice(SHAPES)
    return f"How many {shape}s are there?", str(scene.count(shape)), "short"


def example(seed: int) -> tuple[Scene, str, str, str]:
    """The scene and question of ``seed`` (the next seeds are tried while a scene
    cannot answer the drawn kind, so every seed gives an example)."""
    kind = random.Random(seed * 7919 + 1).choice(KINDS)
    for offset in range(1000):
        scene = make_scene(seed * 1000 + offset)
        asked = ask(scene, seed, kind)
        if asked:
            return (scene, *asked)
    raise RuntimeError(f"no scene for seed {seed}")


# held-out seeds: training draws from [0, HELD_OUT_START), evaluation from above it
HELD_OUT_START = 10_000_000


def write_eval_set(folder: Path, count: int, first_seed: int = HELD_OUT_START) -> Path:
    """``count`` held-out examples as PNGs plus a zspa-eval JSONL; returns the JSONL's path."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for seed in range(first_seed, first_seed + count):
        scene, question, answer, answer_type = example(seed)
        draw(scene).save(folder / f"{seed}.png")
        category = {"Is": "exists", "What": "colour", "How": "count"}[question.split()[0]]
        lines.append(json.dumps({"id": str(seed), "image": f"{seed}.png", "question": question,
                                 "answer": answer, "type": answer_type, "category": category}))
    path = folder / "shapes.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
