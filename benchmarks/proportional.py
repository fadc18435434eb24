"""Random-weight models whose vision encoder and LLM are both the real 7B checkpoint's,
scaled by one common factor in width and depth, for benchmarks on machines that cannot
run the real model.

Width scales by the number of attention heads (each head keeps its real size, which the
CPU backend supports), depth by the number of layers (at least 2: LLaVA reads its
second-to-last vision layer); MLP widths scale with the factor.
The tokenizer, processor, chat template and image geometry are the fixture's
(tests/fixtures/models), which has the real checkpoint's geometry. What does not scale
by the factor: attention's quadratic term (the share of attention in each layer grows as
the width shrinks, in the encoder and in the LLM alike) and the vocabulary (the
fixture's). So the encoder's share of a request is measured, not assumed
(serve_bench.py's phase timings).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tower:  # a transformer stack at the real checkpoint's size
    heads: int
    head_dim: int
    mlp: int
    layers: int
    kv_heads: int | None = None

    def scaled(self, factor: float) -> dict:
        heads = max(1, round(self.heads * factor))
        kv = heads if self.kv_heads is None else _divisor_at_most(heads, max(1, round(self.kv_heads * factor)))
        return {"heads": heads, "kv_heads": kv, "width": heads * self.head_dim,
                "mlp": max(self.head_dim, round(self.mlp * factor)), "layers": max(2, round(self.layers * factor))}


# The 7B checkpoints: LLaVA-1.5-7B and LLaVA-NeXT-7B (Vicuna): CLIP ViT-L/14-336 (LLaVA
# uses 23 of its 24 layers) + a LLaMA-7B LLM; Qwen2.5-VL-7B: its 32-block ViT (full
# attention in every 8th block) + Qwen2-7B.
REAL = {
    "llava-1.5": (Tower(heads=16, head_dim=64, mlp=4096, layers=24), Tower(heads=32, head_dim=128, mlp=11008, layers=32)),
    "llava-next": (Tower(heads=16, head_dim=64, mlp=4096, layers=24), Tower(heads=32, head_dim=128, mlp=11008, layers=32)),
    "qwen2.5-vl": (Tower(heads=16, head_dim=80, mlp=3420, layers=32),
                   Tower(heads=28, head_dim=128, mlp=18944, layers=28, kv_heads=4)),
}
QWEN_FULL_ATTENTION_EVERY = 8
QWEN_MROPE_SECTION = (16, 24, 24)  # Qwen2.5-VL-7B's, 64 rotary pairs


def _divisor_at_most(n: int, most: int) -> int:
    return max(d for d in range(1, most + 1) if n % d == 0)


def scaled_config(family: str, config, factor: float):
    """``config`` (the fixture's transformers config) with the real towers scaled."""
    if family not in REAL:
        raise ValueError(f"no real 7B dimensions for {family!r}; known: {sorted(REAL)}")
    if not 0 < factor <= 1:
        raise ValueError(f"scale must be in (0, 1], got {factor!r}")
    vision, llm = (tower.scaled(factor) for tower in REAL[family])
    v, t = config.vision_config, config.text_config
    if family.startswith("qwen"):
        v.num_heads, v.hidden_size, v.intermediate_size, v.depth = vision["heads"], vision["width"], vision["mlp"], vision["layers"]
        v.fullatt_block_indexes = [i for i in range(v.depth) if (i + 1) % QWEN_FULL_ATTENTION_EVERY == 0] or [v.depth - 1]
        v.out_hidden_size = llm["width"]
    else:
        v.num_attention_heads, v.hidden_size, v.intermediate_size = vision["heads"], vision["width"], vision["mlp"]
        v.num_hidden_layers = vision["layers"]
    t.num_attention_heads, t.num_key_value_heads, t.hidden_size = llm["heads"], llm["kv_heads"], llm["width"]
    t.intermediate_size, t.num_hidden_layers, t.head_dim = llm["mlp"], llm["layers"], REAL[family][1].head_dim
    if getattr(t, "layer_types", None):  # one entry per layer (Qwen2)
        t.layer_types = [t.layer_types[0]] * t.num_hidden_layers
    rope = getattr(t, "rope_parameters", None) or {}
    if "mrope_section" in rope:  # the real split of the 128-wide heads' rotary pairs over (t, h, w)
        t.rope_parameters = {**rope, "mrope_section": list(QWEN_MROPE_SECTION)}
    return config, vision, llm


def build(family: str, factor: float, out: Path, model_classes: dict, renames: dict) -> Path:
    """Save the scaled random-weight model (transformers' own init) in the real
    checkpoint's layout (zspa_selfcheck/fixtures.py) at ``out``."""
    from zspa_selfcheck import fixtures as make_fixtures
    import torch
    import transformers

    from tests.families import fixture_path

    src = fixture_path(family)
    out.mkdir(parents=True)
    for f in src.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, out / f.name)
    config, vision, llm = scaled_config(family, transformers.AutoConfig.from_pretrained(src), factor)
    torch.manual_seed(0)
    model = getattr(transformers, model_classes[family])(config).to(torch.float32).eval()
    make_fixtures._save_weights(model, out, getattr(make_fixtures, renames.get(family, "_llava_rename")))
    config.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    print(f"[{family}] built {out} at scale {factor:g}: vision {vision['layers']}x{vision['width']} "
          f"({vision['heads']} heads), LLM {llm['layers']}x{llm['width']} ({llm['heads']} heads, {llm['kv_heads']} KV), "
          f"{params / 1e6:.0f}M parameters", flush=True)
    return out
