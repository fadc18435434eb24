"""Train the demo model: a small LLaVA-1.5-architecture model (CLIP tower at 336 pixels
with 28-pixel patches, 144 image tokens, Llama LLM) that learns to answer questions about
synthetic scenes of coloured shapes (``zspa_demo/scenes.py``), in two stages as LLaVA is,
and a third that teaches it to answer from part of the image:

1. the vision tower alone learns to say what each patch shows (its colour, its shape, the
   two at once, and whether a shape's centre lies in it) through linear heads on the layer
   LLaVA reads;
2. the tower is frozen, the heads become the first rows of the projector, and the
   projector and LLM learn to answer;
3. token dropout: projector and LLM go on learning with most examples showing a uniformly
   random subset of their visual tokens (keep rates down to 0.1, kept in their order as
   the plugin hands them to the prefill), so that the model, like large VLMs through their
   redundancy, still answers when tokens are missing. Never a pruning method's own
   selection: comparisons between methods stay fair. (Dropout from the start of stage 2
   kept the answer loss on its plateau near 0.3 for all 3000 steps: 60.5% unpruned.)

Deterministic: the same seed and steps give the same weights on the same machine. About
25 minutes on one CPU core.

    python scripts/train_demo_model.py                      # writes zspa_demo/demo_model
    python scripts/train_demo_model.py --tower-steps 3 --steps 3 --dropout-steps 3 --out /tmp/m --eval 8   # a smoke run

Trained only on synthetic shapes: it knows nothing else.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zspa_selfcheck.fixtures import _llava_rename, _save_weights  # noqa: E402
from zspa_demo.scenes import COLOURS, HELD_OUT_START, SHAPES, SIZE, draw, example, label_map  # noqa: E402
from zspa_vllm.core.selection import num_kept  # noqa: E402

# the tokenizer, chat template and image processor are the LLaVA-1.5 fixture's
BASE = REPO / "tests/fixtures/models/llava-1.5"
COPIED = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
# llava-hf's template with the question before the image ("USER: {question}\n<image> ASSISTANT:"):
# a causal LLM then reads the image already knowing what is asked, which this small model
# learns far faster than the other order (image first left it at chance within 20 minutes)
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + '\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image> ' }}{% endfor %}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
SEED = 20261124
# Stage 1's heads, one per fact about a patch (0: background): its colour, its shape, the
# two at once (label_map's 13 labels, what "Is there a red circle?" asks), and whether a
# shape's centre lies in it (counting: one token per shape, whatever its size). Trained
# jointly with the answers instead, a tower from scratch left the model near 60%.
HEADS = {"colour": 1 + len(COLOURS), "shape": 1 + len(SHAPES), "centre": 2, "combo": 1 + len(COLOURS) * len(SHAPES)}
CENTRE_WEIGHT = 10.0  # one patch per shape is a centre: weigh them up against the rest
NAME = "zspa-demo-llava-shapes-token-dropout"
# Stage 3's token dropout: this share of the examples keeps all 144 tokens, the others a
# uniformly random subset at a keep rate drawn uniformly from [MIN_KEEP_RATE, 1]
FULL_SHARE = 0.25
MIN_KEEP_RATE = 0.1
DROPOUT_FIRST_SEED = 1_000_000  # stage 3's scenes, after stage 2's and before the held-out ones

# patch 28 (not CLIP-L's 14): 12 x 12 = 144 image tokens, so it trains on one CPU core in
# about 20 minutes; vision_feature_layer stays -2 (the last layer is computed, unused)
VISION = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4, patch_size=28)
TEXT = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32)
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def build_model():
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = json.loads((BASE / "config.json").read_text())
    config["vision_config"].update(VISION)
    config["text_config"].update(TEXT)
    config["image_seq_length"] = (config["vision_config"]["image_size"] // VISION["patch_size"]) ** 2
    torch.manual_seed(SEED)
    return LlavaForConditionalGeneration(LlavaConfig(**config)).float()


def patch_labels(scene) -> torch.Tensor:
    """The label (``label_map``) at the centre of each patch, row-major: one per image token."""
    patch = VISION["patch_size"]
    centres = np.arange(patch // 2, SIZE, patch)
    return torch.from_numpy(np.asarray(label_map(scene))[np.ix_(centres, centres)].astype(np.int64).reshape(-1))


def patch_targets(scene) -> dict[str, torch.Tensor]:
    """Per patch (row-major): its colour (1 + index in COLOURS), shape (1 + index in
    SHAPES) and both ("combo": ``patch_labels``), 0 on background; centre 1 on the patch
    holding the centre of a shape's box."""
    labels = patch_labels(scene)
    shape_count, patch = len(SHAPES), VISION["patch_size"]
    centre = torch.zeros_like(labels)
    for shape in scene.shapes:
        left, top, right, bottom = shape.box
        centre[(top + bottom) // 2 // patch * (SIZE // patch) + (left + right) // 2 // patch] = 1
    return {"colour": torch.where(labels > 0, (labels - 1) // shape_count + 1, 0),
            "shape": torch.where(labels > 0, (labels - 1) % shape_count + 1, 0), "centre": centre,
            "combo": labels}


def patch_features(model, images: torch.Tensor) -> torch.Tensor:
    """The tower's output that LLaVA projects: vision_feature_layer -2, CLS dropped."""
    return model.model.vision_tower(images, output_hidden_states=True).hidden_states[-2][:, 1:]


def pixels(image) -> torch.Tensor:
    """CLIPImageProcessor's output for a 336x336 image (no resize or crop applies)."""
    array = (np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


class Batcher:
    """Prompts exactly as vLLM's chat path builds them: the chat template rendered with
    the generation prompt, tokenized without special tokens, ``<image>`` expanded to 576."""

    def __init__(self, tokenizer, image_token: int, num_image_tokens: int, eos: int, pad: int):
        self.tokenizer, self.image_token, self.n, self.eos, self.pad = tokenizer, image_token, num_image_tokens, eos, pad

    def prompt_ids(self, question: str, count: int | None = None) -> list[int]:
        """The prompt with ``count`` image tokens (all ``n`` by default)."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        at = ids.index(self.image_token)
        return ids[:at] + [self.image_token] * (self.n if count is None else count) + ids[at + 1 :]

    def answer_ids(self, answer: str) -> list[int]:
        return self.tokenizer(" " + answer, add_special_tokens=False).input_ids + [self.eos]

    def batch(self, seeds: list[int], counts: list[int] | None = None):
        """Token ids, attention mask, labels and images of ``seeds``' examples, each
        prompt with ``counts[i]`` image tokens (all by default)."""
        rows, labels, images = [], [], []
        for i, seed in enumerate(seeds):
            scene, question, answer, _ = example(seed)
            prompt, target = self.prompt_ids(question, None if counts is None else counts[i]), self.answer_ids(answer)
            rows.append(prompt + target)
            labels.append([-100] * len(prompt) + target)
            images.append(pixels(draw(scene)))
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        target = torch.full((len(rows), width), -100)
        for i, (row, label) in enumerate(zip(rows, labels)):
            ids[i, : len(row)], mask[i, : len(row)], target[i, : len(row)] = torch.tensor(row), 1, torch.tensor(label)
        return ids, mask, target, torch.stack(images)


def scenes(seeds: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stage 1's batch: the images of ``seeds``' scenes and their patch targets."""
    images, targets = [], []
    for seed in seeds:
        scene = example(seed)[0]
        images.append(pixels(draw(scene)))
        targets.append(patch_targets(scene))
    return torch.stack(images), {name: torch.stack([t[name] for t in targets]) for name in HEADS}


def cosine(optimizer, steps: int, warmup: int):
    """Linear warm-up, then cosine decay to 5%."""
    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, rate)


def train(parameters, steps: int, warmup: int, lr: float, loss_of, label: str) -> None:
    """AdamW with clipping over ``steps`` steps; ``loss_of(step)`` gives a step's loss."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    schedule = cosine(optimizer, steps, warmup)
    started, running = time.time(), None
    for step in range(steps):
        loss = loss_of(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 25 == 0 or step == steps - 1:
            elapsed = time.time() - started
            eta = elapsed / (step + 1) * (steps - step - 1)
            print(f"\r{label} step {step + 1}/{steps} loss {running:.3f} {elapsed:5.0f}s (eta {eta:4.0f}s)", end="", flush=True)
    print()


def train_tower(model, heads: torch.nn.ModuleDict, args) -> dict[str, float]:
    """Stage 1: the tower and its heads learn each patch's colour, shape, both and centre.
    Returns the heads' held-out accuracy (colour and shape on shape patches, centres found)."""
    weights = {"centre": torch.tensor([1.0, CENTRE_WEIGHT])}

    def loss_of(step: int) -> torch.Tensor:
        images, targets = scenes(list(range(step * args.tower_batch, (step + 1) * args.tower_batch)))
        features = patch_features(model, images)
        return sum(torch.nn.functional.cross_entropy(heads[name](features).flatten(0, 1), targets[name].flatten(),
                                                     weight=weights.get(name)) for name in HEADS)

    tower = list(model.model.vision_tower.parameters()) + list(heads.parameters())
    train(tower, args.tower_steps, max(1, min(100, args.tower_steps // 10)), args.lr, loss_of, "tower")
    with torch.no_grad():
        images, targets = scenes(list(range(HELD_OUT_START, HELD_OUT_START + 64)))
        guesses = {name: head(patch_features(model, images)).argmax(-1) for name, head in heads.items()}
    shape_patches, centres = targets["colour"] > 0, targets["centre"] == 1
    return {"colour": (guesses["colour"] == targets["colour"])[shape_patches].float().mean().item(),
            "shape": (guesses["shape"] == targets["shape"])[shape_patches].float().mean().item(),
            "centre": (guesses["centre"] == 1)[centres].float().mean().item()}


def visual_subset(generator: torch.Generator, n: int) -> list[int]:
    """Stage 3's token dropout for one example: every index (FULL_SHARE of the time), or
    a uniformly random subset at a keep rate drawn from [MIN_KEEP_RATE, 1], ascending."""
    if torch.rand((), generator=generator).item() < FULL_SHARE:
        return list(range(n))
    rate = MIN_KEEP_RATE + (1 - MIN_KEEP_RATE) * torch.rand((), generator=generator).item()
    return sorted(torch.randperm(n, generator=generator)[: num_kept(n, rate)].tolist())


def answer_loss(model, batcher: "Batcher", seeds: list[int], subsets: list[list[int]]) -> torch.Tensor:
    """The answers' loss with each example's image reduced to the tokens in its subset,
    placed in order on a placeholder run of that length (positions as vLLM gives them)."""
    ids, mask, target, images = batcher.batch(seeds, [len(subset) for subset in subsets])
    with torch.no_grad():  # the tower is frozen
        features = patch_features(model, images)
    projected = model.model.multi_modal_projector(features)
    is_image = ids == batcher.image_token
    embeds = model.get_input_embeddings()(ids.masked_fill(is_image, 0))
    rows = torch.cat([projected[i, subset] for i, subset in enumerate(subsets)])
    embeds = embeds.masked_scatter(is_image.unsqueeze(-1), rows)  # row-major: example by example, in order
    return model(inputs_embeds=embeds, attention_mask=mask, labels=target).loss


def train_answers(model, batcher: "Batcher", heads: torch.nn.ModuleDict, args) -> None:
    """Stage 2: the tower frozen, its heads copied into the projector's first rows (so
    the LLM sees what each patch is from the first step), projector and LLM answer."""
    projector = model.model.multi_modal_projector.linear_1
    with torch.no_grad():
        rows = torch.cat([head.weight for head in heads.values()])
        projector.weight[: len(rows)] = rows
        projector.bias[: len(rows)] = torch.cat([head.bias for head in heads.values()])
    for parameter in model.model.vision_tower.parameters():
        parameter.requires_grad_(False)

    def loss_of(step: int) -> torch.Tensor:
        seeds = list(range(step * args.batch, (step + 1) * args.batch))
        return answer_loss(model, batcher, seeds, [list(range(batcher.n))] * len(seeds))

    trained = [p for p in model.parameters() if p.requires_grad]
    train(trained, args.steps, max(1, min(200, args.steps // 10)), args.lr, loss_of, "answers")


def train_dropout(model, batcher: "Batcher", args) -> None:
    """Stage 3: projector and LLM again, most images reduced to a random subset of their
    tokens (``visual_subset``), on new scenes."""

    def loss_of(step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(SEED + DROPOUT_FIRST_SEED + step)  # the same subsets every run
        first = DROPOUT_FIRST_SEED + step * args.batch
        seeds = list(range(first, first + args.batch))
        return answer_loss(model, batcher, seeds, [visual_subset(generator, batcher.n) for _ in seeds])

    trained = [p for p in model.parameters() if p.requires_grad]
    train(trained, args.dropout_steps, max(1, min(50, args.dropout_steps // 10)), args.dropout_lr, loss_of, "dropout")


@torch.no_grad()
def accuracy(model, batcher: Batcher, seeds: list[int], max_new: int = 4) -> dict[str, float]:
    """Greedy answers (batched, one image each) against the held-out truth: the share
    right overall ("all") and per question kind."""
    model.eval()
    right: dict[str, list[bool]] = {}
    for start in range(0, len(seeds), 16):
        chunk = seeds[start : start + 16]
        examples = [example(seed) for seed in chunk]
        prompts = [batcher.prompt_ids(q) for _, q, _, _ in examples]
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), batcher.pad)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding for generation
            ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
        images = torch.stack([pixels(draw(scene)) for scene, *_ in examples])
        out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=images, max_new_tokens=max_new,
                             do_sample=False, eos_token_id=batcher.eos, pad_token_id=batcher.pad)
        for (_, question, answer, _), row in zip(examples, out[:, width:]):
            text = batcher.tokenizer.decode(row, skip_special_tokens=True).strip()
            kind = {"Is": "exists", "What": "colour", "How": "count"}[question.split()[0]]
            for key in ("all", kind):
                right.setdefault(key, []).append(text == answer)
    model.train()
    return {kind: sum(r) / len(r) for kind, r in sorted(right.items())}


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoTokenizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "zspa_demo/demo_model")
    p.add_argument("--tower-steps", type=int, default=1500, help="stage 1: the tower and its patch heads")
    p.add_argument("--tower-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3000, help="stage 2: projector and LLM on answers")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--dropout-steps", type=int, default=1000, help="stage 3: answers with token dropout")
    p.add_argument("--dropout-lr", type=float, default=5e-4)
    p.add_argument("--eval", type=int, default=512, help="held-out examples scored at the end (0: none)")
    # one thread: the committed weights came from one (float sums differ with the thread count)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    tokenizer.chat_template = CHAT_TEMPLATE
    config = json.loads((BASE / "config.json").read_text())
    model = build_model()
    batcher = Batcher(tokenizer, config["image_token_index"], model.config.image_seq_length, tokenizer.eos_token_id,
                      config["pad_token_id"])
    hidden = model.config.vision_config.hidden_size
    heads = torch.nn.ModuleDict({name: torch.nn.Linear(hidden, classes) for name, classes in HEADS.items()})
    started = time.time()
    model.train()
    heads_accuracy = train_tower(model, heads, args)
    print("patch heads, held-out: " + ", ".join(f"{name} {value:.3f}" for name, value in heads_accuracy.items()))
    train_answers(model, batcher, heads, args)
    if args.dropout_steps:
        train_dropout(model, batcher, args)
    score = accuracy(model, batcher, list(range(HELD_OUT_START, HELD_OUT_START + args.eval))) if args.eval else None
    if score is not None:
        print(f"held-out accuracy ({args.eval} examples, unpruned, transformers): {score['all']:.3f} ("
              + ", ".join(f"{kind} {value:.3f}" for kind, value in score.items() if kind != "all") + ")")
    save(model, args.out, args, score, heads_accuracy, time.time() - started)
    print(f"wrote {args.out}")
    return 0


def save(model, out: Path, args, score: dict[str, float] | None, heads_accuracy: dict[str, float], seconds: float) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.eval()
    _save_weights(model, out, _llava_rename)
    model.config.architectures = ["LlavaForConditionalGeneration"]
    model.config.save_pretrained(out)
    for name in COPIED:
        shutil.copy(BASE / name, out / name)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    processor = json.loads((BASE / "processor_config.json").read_text())
    processor["patch_size"] = VISION["patch_size"]  # the processor's image-token count: (336 / 28) ** 2
    (out / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    params = sum(p.numel() for p in model.parameters())
    info = {
        "name": NAME,
        "what": "A small LLaVA-1.5-architecture model trained ONLY on synthetic scenes of coloured shapes "
        "(zspa_demo/scenes.py), with token dropout (in its last training stage three quarters of the examples "
        "showed a uniformly random subset of their visual tokens) so it still answers when tokens are pruned. It "
        "answers questions about such scenes and knows nothing else.",
        "trained_by": "scripts/train_demo_model.py",
        "seed": SEED, "tower_steps": args.tower_steps, "tower_batch": args.tower_batch,
        "steps": args.steps, "batch": args.batch, "lr": args.lr,
        "token_dropout": {"steps": args.dropout_steps, "lr": args.dropout_lr, "full_share": FULL_SHARE,
                          "min_keep_rate": MIN_KEEP_RATE,
                          "subsets": "uniformly random, kept in order; never a pruning method's selection"},
        "parameters": params, "train_seconds": round(seconds),
        "patch_heads_accuracy": {name: round(value, 4) for name, value in heads_accuracy.items()},
        "held_out_accuracy_unpruned": None if score is None else round(score["all"], 4),
        "held_out_accuracy_per_kind": None if score is None else {k: round(v, 4) for k, v in score.items() if k != "all"},
        "held_out_examples": args.eval,
        "vision": VISION, "text": TEXT,
    }
    (out / "demo_model.json").write_text(json.dumps(info, indent=2) + "\n")
    measured = "not measured" if score is None else f"{score['all']:.1%} of {args.eval} questions"
    (out / "README.md").write_text(
        f"# {NAME}\n\n{info['what']}\n\n"
        "- Architecture: `LlavaForConditionalGeneration` (CLIP ViT at 336 pixels with 28-pixel patches, 144 image tokens per image;"
        f" vision hidden {VISION['hidden_size']} x {VISION['num_hidden_layers']} layers; Llama LLM hidden"
        f" {TEXT['hidden_size']} x {TEXT['num_hidden_layers']} layers), {params / 1e6:.2f} M parameters.\n"
        "- Chat template: the question before the image ('USER: {question}\\n<image> ASSISTANT:').\n"
        "- Questions: 'Is there a red circle?' (yes / no), 'What colour is the square?' (red / green / blue /"
        " yellow), 'How many triangles are there?' (a digit).\n"
        f"- Trained in three stages: the vision tower alone on what each patch shows ({args.tower_steps} steps), then"
        f" the projector and LLM on answers with the tower frozen ({args.steps} steps), then on answers with token"
        f" dropout ({args.dropout_steps} steps: {1 - FULL_SHARE:.0%} of the examples with a uniformly random subset"
        f" of their visual tokens, keep rate {MIN_KEEP_RATE:g}-1, kept in order; never a pruning method's own"
        " selection).\n"
        f"- Held-out accuracy, unpruned (transformers, greedy): {measured}.\n\n"
        "Regenerate with `python scripts/train_demo_model.py`; details in `demo_model.json`.\n"
    )


if __name__ == "__main__":
    sys.exit(main())
