"""The demo model's data, training script and committed files (no engine: the served
accuracy is checked in tests/server/test_demo_model.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zspa_demo import scenes

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "zspa_demo" / "demo_model"
sys.path.insert(0, str(REPO))


def test_examples_are_reproducible_and_their_answers_follow_the_scene():
    kinds = set()
    for seed in range(300):
        scene, question, answer, answer_type = scenes.example(seed)
        assert scenes.example(seed) == (scene, question, answer, answer_type)
        assert scenes.MIN_SHAPES <= len(scene.shapes) <= scenes.MAX_SHAPES
        words = question.rstrip("?").split()
        if question.startswith("Is there"):
            colour, kind = words[-2], words[-1]
            assert answer == ("yes" if scene.count(kind, colour) else "no") and answer_type == "yesno"
        elif question.startswith("What colour"):
            kind = words[-1]
            assert scene.count(kind) == 1 and answer == next(s.colour for s in scene.shapes if s.kind == kind)
        else:
            kind = words[2][:-1]  # "How many triangles are there"
            assert answer == str(scene.count(kind))
        kinds.add(question.split()[0])
    assert kinds == {"Is", "What", "How"}
    yes = [scenes.example(s)[2] for s in range(300) if scenes.example(s)[1].startswith("Is")]
    assert 0.3 < yes.count("yes") / len(yes) < 0.7  # balanced


def test_shapes_do_not_overlap_and_are_drawn_where_the_scene_says():
    scene = scenes.make_scene(7)
    image = np.asarray(scenes.draw(scene))
    for shape in scene.shapes:
        left, top, right, bottom = shape.box
        assert tuple(image[(top + bottom) // 2 + 5, (left + right) // 2]) == scenes.COLOURS[shape.colour]
    for a in scene.shapes:
        for b in scene.shapes:
            assert a is b or scenes._apart(a.box, b.box, 8)


def test_patch_labels_name_the_shape_under_each_patch_centre():
    from scripts.train_demo_model import patch_labels

    scene = scenes.Scene((scenes.Shape("square", "green", (0, 0, 84, 84)), scenes.Shape("circle", "red", (168, 168, 252, 252))))
    labels = patch_labels(scene).reshape(12, 12)  # 28-pixel patches, centres at 14, 42, 70, ...
    square, circle = 1 + 1 * 3 + 1, 1 + 0 * 3 + 0  # green = colour 1, square = shape 1; red circle = 1
    assert (labels[:3, :3] == square).all() and labels[3, 3] == 0
    # the circle: centre (210, 210), radius 42; patch centres 182, 210, 238 lie inside, 154 does not
    assert (labels[6:9, 6:9] == circle).all() and labels[5, 5] == 0 and labels[9, 9] == 0
    assert (labels == 0).sum() == 144 - 9 - 9


def test_patch_targets_split_colour_and_shape_and_mark_each_centre():
    from scripts.train_demo_model import HEADS, patch_labels, patch_targets

    scene = scenes.Scene((scenes.Shape("square", "green", (0, 0, 84, 84)), scenes.Shape("triangle", "yellow", (150, 200, 250, 300))))
    targets = {name: t.reshape(12, 12) for name, t in patch_targets(scene).items()}
    assert set(targets) == set(HEADS)
    assert (targets["colour"][:3, :3] == 1 + 1).all() and (targets["shape"][:3, :3] == 1 + 1).all()  # green, square
    # the triangle's box centre (200, 250) lies in patch row 250 // 28 = 8, column 200 // 28 = 7
    assert targets["colour"][8, 7] == 1 + 3 and targets["shape"][8, 7] == 1 + 2  # yellow, triangle
    assert targets["centre"].sum() == 2 and targets["centre"][1, 1] == 1 and targets["centre"][8, 7] == 1
    assert targets["combo"][8, 7] == 1 + 3 * 3 + 2 and (targets["combo"] == patch_labels(scene).reshape(12, 12)).all()
    # (210, 238), that patch's centre pixel, is inside the triangle; background is where patch_labels says
    background = patch_labels(scene).reshape(12, 12) == 0
    assert ((targets["colour"] == 0) == background).all() and ((targets["shape"] == 0) == background).all()


def test_training_inputs_are_what_the_served_processor_makes():
    """The training script builds prompts and pixels itself (fast); they must equal what
    vLLM's HF processor makes of the same chat request for the committed model."""
    from transformers import AutoProcessor

    from scripts.train_demo_model import Batcher, pixels

    processor = AutoProcessor.from_pretrained(DEMO)
    config = json.loads((DEMO / "config.json").read_text())
    tokenizer = processor.tokenizer
    batcher = Batcher(tokenizer, config["image_token_index"], config["image_seq_length"], tokenizer.eos_token_id,
                      config["pad_token_id"])
    scene, question, _, _ = scenes.example(scenes.HELD_OUT_START)
    image = scenes.draw(scene)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    served = processor(text=text, images=[image], add_special_tokens=False, return_tensors="pt")
    assert served["input_ids"][0].tolist() == batcher.prompt_ids(question)
    assert batcher.prompt_ids(question).count(config["image_token_index"]) == 144
    assert np.abs(served["pixel_values"][0].numpy() - pixels(image).numpy()).max() < 1e-5


def test_the_committed_demo_model_says_what_it_is():
    info = json.loads((DEMO / "demo_model.json").read_text())
    assert info["trained_by"] == "scripts/train_demo_model.py"
    assert "synthetic" in info["what"] and info["held_out_accuracy_unpruned"] >= 0.9
    assert "trained ONLY on synthetic scenes" in (DEMO / "README.md").read_text()
    assert (DEMO / "model.safetensors").stat().st_size < 20 * 2**20


@pytest.mark.timeout(300)
def test_the_training_script_runs_a_few_steps_deterministically(tmp_path):
    def train(out: Path) -> bytes:
        command = [sys.executable, str(REPO / "scripts/train_demo_model.py"), "--tower-steps", "2", "--tower-batch", "2",
                   "--steps", "3", "--batch", "2", "--dropout-steps", "3", "--eval", "2", "--out", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=280)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "tower step 2/2 loss" in done.stdout and "answers step 3/3 loss" in done.stdout
        assert "dropout step 3/3 loss" in done.stdout
        assert "patch heads, held-out: colour" in done.stdout and "held-out accuracy (2 examples" in done.stdout
        return (out / "model.safetensors").read_bytes()

    first = train(tmp_path / "a")
    assert first == train(tmp_path / "b")  # same seed, same steps: the same weights
    written = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert written == sorted(p.name for p in DEMO.iterdir())
    info = json.loads((tmp_path / "a/demo_model.json").read_text())
    assert (info["tower_steps"], info["steps"], info["token_dropout"]["steps"]) == (2, 3, 3)


def test_token_dropout_keeps_random_subsets_in_order_and_all_tokens_is_the_plain_loss():
    """Stage 3's subsets: ascending, every size from the minimum keep rate up, all 144 a
    quarter of the time, each token about equally often; and the loss on all tokens is
    the one transformers computes from the image (the placeholder run filled in order)."""
    import torch
    from transformers import AutoTokenizer

    import scripts.train_demo_model as training
    from zspa_vllm.core.selection import num_kept

    generator = torch.Generator().manual_seed(0)
    subsets = [training.visual_subset(generator, 144) for _ in range(2000)]
    assert all(s == sorted(set(s)) and num_kept(144, training.MIN_KEEP_RATE) <= len(s) <= 144 for s in subsets)
    full = sum(len(s) == 144 for s in subsets) / len(subsets)
    assert abs(full - training.FULL_SHARE) < 0.04
    counts = torch.zeros(144)
    for s in subsets:
        counts[s] += 1
    assert counts.max() / counts.min() < 1.3  # no position favoured
    assert min(map(len, subsets)) < 25 and len({len(s) for s in subsets}) > 100

    tokenizer = AutoTokenizer.from_pretrained(training.BASE)
    tokenizer.chat_template = training.CHAT_TEMPLATE
    config = json.loads((training.BASE / "config.json").read_text())
    model = training.build_model()
    batcher = training.Batcher(tokenizer, config["image_token_index"], model.config.image_seq_length,
                               tokenizer.eos_token_id, config["pad_token_id"])
    seeds = [1, 2, 3]
    ids, mask, target, images = batcher.batch(seeds)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask, pixel_values=images, labels=target).loss
        ours = training.answer_loss(model, batcher, seeds, [list(range(144))] * 3)
        dropped = training.answer_loss(model, batcher, seeds, [list(range(0, 144, 2))] * 3)
    assert torch.allclose(ours, plain, rtol=0, atol=1e-6) and not torch.allclose(dropped, plain, rtol=0, atol=1e-4)


def test_the_eval_set_labels_each_question_with_its_kind(tmp_path):
    from zspa_eval.dataset import load_rows

    rows = load_rows(str(scenes.write_eval_set(tmp_path, 30)))
    assert len(rows) == 30 and {r.category for r in rows} == {"exists", "colour", "count"}
    for row in rows:
        first = {"exists": "Is", "colour": "What", "count": "How"}[row.category]
        assert row.question.startswith(first + " ") and (row.type == "yesno") == (row.category == "exists")
