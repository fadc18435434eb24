"""Train the demo model: a small LLaVA-1.5-architecture model (CLIP 336/14 tower, 576
image tokens, Llama LLM) that learns to answer questions about synthetic scenes of
coloured shapes (``zspa_eval/shapes.py``). Deterministic: the same seed and steps give
the same weights on the same machine. About 20 minutes on 2 CPU cores.

    python scripts/train_demo_model.py                      # writes server/demo_model
    python scripts/train_demo_model.py --steps 3 --out /tmp/m --eval 8   # a smoke run

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

from scripts.make_fixtures import _llava_rename, _save_weights  # noqa: E402
from zspa_eval.shapes import COLOURS, HELD_OUT_START, SHAPES, SIZE, draw, example, label_map  # noqa: E402

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
# Like LLaVA's own vision tower, ours should know what it sees before the LLM learns to
# ask it: besides the answers, the tower's features (the layer the projector reads) are
# trained to name each patch's shape and colour (or background) through a linear head
# that is thrown away. Answers alone leave a tower trained from scratch near chance here.
PATCH_LOSS_WEIGHT = 0.5
PATCH_CLASSES = 1 + len(COLOURS) * len(SHAPES)
NAME = "zspa-demo-llava-synthetic-shapes"

# patch 28 (not CLIP-L's 14): 12 x 12 = 144 image tokens, so it trains on 2 CPU cores in
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


def pixels(image) -> torch.Tensor:
    """CLIPImageProcessor's output for a 336x336 image (no resize or crop applies)."""
    array = (np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


class Batcher:
    """Prompts exactly as vLLM's chat path builds them: the chat template rendered with
    the generation prompt, tokenized without special tokens, ``<image>`` expanded to 576."""

    def __init__(self, tokenizer, image_token: int, num_image_tokens: int, eos: int, pad: int):
        self.tokenizer, self.image_token, self.n, self.eos, self.pad = tokenizer, image_token, num_image_tokens, eos, pad

    def prompt_ids(self, question: str) -> list[int]:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        at = ids.index(self.image_token)
        return ids[:at] + [self.image_token] * self.n + ids[at + 1 :]

    def answer_ids(self, answer: str) -> list[int]:
        return self.tokenizer(" " + answer, add_special_tokens=False).input_ids + [self.eos]

    def batch(self, seeds: list[int]):
        rows, labels, images, patches = [], [], [], []
        for seed in seeds:
            scene, question, answer, _ = example(seed)
            patches.append(patch_labels(scene))
            prompt, target = self.prompt_ids(question), self.answer_ids(answer)
            rows.append(prompt + target)
            labels.append([-100] * len(prompt) + target)
            images.append(pixels(draw(scene)))
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        target = torch.full((len(rows), width), -100)
        for i, (row, label) in enumerate(zip(rows, labels)):
            ids[i, : len(row)], mask[i, : len(row)], target[i, : len(row)] = torch.tensor(row), 1, torch.tensor(label)
        return ids, mask, target, torch.stack(images), torch.stack(patches)


@torch.no_grad()
def accuracy(model, batcher: Batcher, seeds: list[int], max_new: int = 4) -> float:
    """Greedy answers (batched, one image each) against the held-out truth."""
    model.eval()
    right = 0
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
        for (_, _, answer, _), row in zip(examples, out[:, width:]):
            text = batcher.tokenizer.decode(row, skip_special_tokens=True).strip()
            right += text == answer
    model.train()
    return right / len(seeds)


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoTokenizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "server/demo_model")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval", type=int, default=512, help="held-out examples scored at the end (0: none)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    tokenizer.chat_template = CHAT_TEMPLATE
    config = json.loads((BASE / "config.json").read_text())
    model = build_model()
    batcher = Batcher(tokenizer, config["image_token_index"], model.config.image_seq_length, tokenizer.eos_token_id,
                      config["pad_token_id"])
    patch_head = torch.nn.Linear(model.config.vision_config.hidden_size, PATCH_CLASSES)
    features: list[torch.Tensor] = []  # the vision layer LLaVA reads (vision_feature_layer -2), CLS dropped
    model.model.vision_tower.encoder.layers[-2].register_forward_hook(
        lambda module, args, out: features.append((out[0] if isinstance(out, tuple) else out)[:, 1:]))
    parameters = list(model.parameters()) + list(patch_head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, min(200, args.steps // 10))

    def rate(step: int) -> float:  # linear warm-up, cosine decay to 5%
        if step < warmup:
            return (step + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    held_out = list(range(HELD_OUT_START, HELD_OUT_START + args.eval))
    started, seen, running = time.time(), 0, None
    model.train()
    for step in range(args.steps):
        seeds = list(range(seen, seen + args.batch))
        seen += args.batch
        ids, mask, target, images, patch_target = batcher.batch(seeds)
        features.clear()
        answer_loss = model(input_ids=ids, attention_mask=mask, pixel_values=images, labels=target).loss
        patch_loss = torch.nn.functional.cross_entropy(patch_head(features.pop()).flatten(0, 1), patch_target.flatten())
        loss = answer_loss + PATCH_LOSS_WEIGHT * patch_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        now = (answer_loss.item(), patch_loss.item())
        running = now if running is None else tuple(0.98 * r + 0.02 * n for r, n in zip(running, now))
        if step % 25 == 0 or step == args.steps - 1:
            elapsed = time.time() - started
            eta = elapsed / (step + 1) * (args.steps - step - 1)
            print(f"\rstep {step + 1}/{args.steps} loss {running[0]:.3f} (patches {running[1]:.3f}) {elapsed:5.0f}s"
                  f" (eta {eta:4.0f}s)", end="", flush=True)
        if args.eval and args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            print(f"\n  held-out accuracy ({min(64, args.eval)}): {accuracy(model, batcher, held_out[:64]):.3f}", flush=True)
    print()
    score = accuracy(model, batcher, held_out) if args.eval else None
    if score is not None:
        print(f"held-out accuracy ({args.eval} examples, unpruned, transformers): {score:.3f}")
    save(model, args.out, args, score, time.time() - started)
    print(f"wrote {args.out}")
    return 0


def save(model, out: Path, args, score: float | None, seconds: float) -> None:
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
        "(zspa_eval/shapes.py). It answers questions about such scenes and knows nothing else.",
        "trained_by": "scripts/train_demo_model.py",
        "seed": SEED, "steps": args.steps, "batch": args.batch, "lr": args.lr,
        "parameters": params, "train_seconds": round(seconds),
        "held_out_accuracy_unpruned": score, "held_out_examples": args.eval,
        "vision": VISION, "text": TEXT,
    }
    (out / "demo_model.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "README.md").write_text(
        f"# {NAME}\n\n{info['what']}\n\n"
        "- Architecture: `LlavaForConditionalGeneration` (CLIP ViT at 336 pixels with 28-pixel patches, 144 image tokens per image;"
        f" vision hidden {VISION['hidden_size']} x {VISION['num_hidden_layers']} layers; Llama LLM hidden"
        f" {TEXT['hidden_size']} x {TEXT['num_hidden_layers']} layers), {params / 1e6:.2f} M parameters.\n"
        "- Chat template: the question before the image ('USER: {question}\\n<image> ASSISTANT:').\n"
        "- Questions: 'Is there a red circle?' (yes / no), 'What colour is the square?' (red / green / blue /"
        " yellow), 'How many triangles are there?' (a digit).\n"
        f"- Held-out accuracy, unpruned (transformers, greedy): {score}.\n\n"
        "Regenerate with `python scripts/train_demo_model.py`; details in `demo_model.json`.\n"
    )


if __name__ == "__main__":
    sys.exit(main())
