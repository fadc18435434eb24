"""The families zspa-selfcheck and the tests run: one row each, and the facts about their
tiny random-weight fixtures (zspa_selfcheck/fixtures.py). Importing it has no side
effects (no environment variables, no vLLM): benchmarks/ and scripts/ import it.

  FAMILIES                                 the families, by name
  visual_tokens(family, w, h, fixture)     the model's own visual token count, from its
                                           formula and the fixture folder's configs
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Family:
    name: str  # the fixture's folder name
    architecture: str
    image_token: str  # the token of an image's run of embed positions
    prompt_format: str  # the templated prompt for one image + question, {q} = question
    engine: dict = field(default_factory=dict)  # engine settings this family needs (over ENGINE_KWARGS)
    # the template's one placeholder per image expands to wrapper tokens around the run
    # (or, unexpanded, is another token): the stock smoke tests' token arithmetic skips it
    wrapped: bool = False
    takes_embeddings: bool = True  # vLLM accepts precomputed image embeddings for it


QWEN_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{q}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
# Qwen3-VL's template has no default system prompt
QWEN3_PROMPT = QWEN_PROMPT.split("<|im_end|>\n", 1)[1]
# Qwen3.5's generation prompt opens a <think> block
QWEN35_PROMPT = QWEN3_PROMPT + "<think>\n"
# vLLM 0.32's CPU kernel for Qwen3.5's Gated DeltaNet layers takes bfloat16 only
HYBRID_ENGINE = dict(dtype="bfloat16")

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "llava-1.5",
            "LlavaForConditionalGeneration",
            "<image>",
            "USER: <image>\n{q} ASSISTANT:",
        ),
        Family(
            "llava-next",
            "LlavaNextForConditionalGeneration",
            "<image>",
            "[INST] <image>\n{q} [/INST]",
        ),
        Family("qwen2.5-vl", "Qwen2_5_VLForConditionalGeneration", "<|image_pad|>", QWEN_PROMPT),
        Family("qwen2-vl", "Qwen2VLForConditionalGeneration", "<|image_pad|>", QWEN_PROMPT),
        Family("qwen3-vl", "Qwen3VLForConditionalGeneration", "<|image_pad|>", QWEN3_PROMPT),
        Family("qwen3-vl-moe", "Qwen3VLMoeForConditionalGeneration", "<|image_pad|>", QWEN3_PROMPT),
        Family("qwen3.5", "Qwen3_5ForConditionalGeneration", "<|image_pad|>", QWEN35_PROMPT, HYBRID_ENGINE),
        Family("qwen3.5-moe", "Qwen3_5MoeForConditionalGeneration", "<|image_pad|>", QWEN35_PROMPT, HYBRID_ENGINE),
        Family(
            "llava-onevision",
            "LlavaOnevisionForConditionalGeneration",
            "<image>",
            "<|im_start|>user <image>\n{q}<|im_end|>\n<|im_start|>assistant\n",
        ),
        Family(
            "internvl",
            "InternVLForConditionalGeneration",
            "<IMG_CONTEXT>",  # the template's placeholder too; it expands to <img> run </img>
            "<|im_start|>user\n<IMG_CONTEXT>\n{q}<|im_end|>\n<|im_start|>assistant\n",
            wrapped=True,
        ),
        Family(
            "gemma3",
            "Gemma3ForConditionalGeneration",
            "<image_soft_token>",  # the template puts <start_of_image>, expanded around the run
            "<bos><start_of_turn>user\n<start_of_image>{q}<end_of_turn>\n<start_of_turn>model\n",
            # vLLM picks 128-token KV blocks for it by default (its sliding-window layers);
            # a 256-token image pruned to 64 would never fill one: asked 16, vLLM makes 32
            dict(block_size=16),
            wrapped=True,
            takes_embeddings=False,
        ),
    )
}
QWEN_FAMILIES = [name for name in FAMILIES if name.startswith("qwen")]  # M-RoPE, flat pixel layout
HYBRID_FAMILIES = [name for name in FAMILIES if FAMILIES[name].engine is HYBRID_ENGINE]  # linear + full attention


# --------------------------------------------------------------------------- token counts
# Written from the models' published preprocessing, independently of vLLM's code.
def _anyres_grid(width: int, height: int, cfg: dict) -> tuple[int, int]:
    """LLaVA-NeXT / OneVision anyres: the (rows, columns) of grid features of the best-fit
    pinpoint grid of tiles, unpadded back to the image's aspect ratio."""
    pinpoints = cfg["image_grid_pinpoints"]  # [[height, width], ...]
    tile = cfg["vision_config"]["image_size"]
    side = tile // cfg["vision_config"]["patch_size"]  # features per tile side
    # select_best_resolution: max effective resolution, then least waste
    best, best_eff, best_waste = None, -1, math.inf
    for ph, pw in pinpoints:
        scale = min(pw / width, ph / height)
        dw, dh = int(width * scale), int(height * scale)
        eff = min(dw * dh, width * height)
        waste = pw * ph - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (ph, pw), eff, waste
    cur_h, cur_w = best[0] // tile * side, best[1] // tile * side
    if width / height > cur_w / cur_h:
        new_h = int(round(height * (cur_w / width), 7))
        cur_h -= 2 * ((cur_h - new_h) // 2)
    else:
        new_w = int(round(width * (cur_h / height), 7))
        cur_w -= 2 * ((cur_w - new_w) // 2)
    return cur_h, cur_w


def _llava_next_count(width: int, height: int, cfg: dict) -> int:
    """LLaVA-NeXT: base 336 view (24 x 24) + the unpadded grid, plus one image_newline
    per row of grid features."""
    side = cfg["vision_config"]["image_size"] // cfg["vision_config"]["patch_size"]
    rows, cols = _anyres_grid(width, height, cfg)
    return side * side + rows * cols + rows


def _llava_onevision_count(width: int, height: int, cfg: dict) -> int:
    """LLaVA-OneVision anyres_max_9: as LLaVA-NeXT (384 tiles, 27 x 27), the grid first
    pooled down (bilinear) to about 9 tiles' worth of features."""
    side = cfg["vision_config"]["image_size"] // cfg["vision_config"]["patch_size"]
    rows, cols = _anyres_grid(width, height, cfg)
    max_tiles = int(cfg["vision_aspect_ratio"].removeprefix("anyres_max_"))
    ratio = math.sqrt(rows * cols / (max_tiles * side**2))
    if ratio > 1.1:
        rows, cols = int(rows // ratio), int(cols // ratio)
    return side * side + rows * cols + rows


def _internvl_count(width: int, height: int, ip: dict, seq: int) -> int:
    """InternVL dynamic tiling: the (columns, rows) grid of min..max tiles whose aspect
    ratio is closest to the image's (ties: more tiles while they cover under twice the
    image), plus a thumbnail when there is more than one tile; ``seq`` tokens per tile."""
    tile = ip["size"]["height"]
    grids = sorted(
        ((c, r) for c in range(1, ip["max_patches"] + 1) for r in range(1, ip["max_patches"] + 1)
         if ip["min_patches"] <= c * r <= ip["max_patches"]),
        key=lambda g: g[0] * g[1],
    )
    best, best_diff = (1, 1), math.inf
    for c, r in grids:
        diff = abs(width / height - c / r)
        if diff < best_diff:
            best, best_diff = (c, r), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * c * r:
            best = (c, r)
    tiles = best[0] * best[1]
    return seq * (tiles + (1 if tiles > 1 else 0))


def qwen_smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int):
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def visual_tokens(family: str, width: int, height: int, fixture: Path) -> int:
    """Placeholder tokens the model in the folder ``fixture`` uses for one ``width`` x
    ``height`` image."""
    path = Path(fixture)
    cfg = json.loads((path / "config.json").read_text())
    if family == "llava-1.5":
        side = cfg["vision_config"]["image_size"] // cfg["vision_config"]["patch_size"]
        return side * side  # CLS dropped by vision_feature_select_strategy "default"
    if family == "llava-next":
        return _llava_next_count(width, height, cfg)
    if family == "llava-onevision":
        return _llava_onevision_count(width, height, cfg)
    if family == "gemma3":
        return cfg["mm_tokens_per_image"]  # without pan-and-scan: every image
    if family == "internvl":
        ip = json.loads((path / "processor_config.json").read_text())["image_processor"]
        return _internvl_count(width, height, ip, cfg["image_seq_length"])
    if family in QWEN_FAMILIES:
        ip = json.loads((path / "processor_config.json").read_text())["image_processor"]
        factor = ip["patch_size"] * ip["merge_size"]
        h, w = qwen_smart_resize(
            height, width, factor, ip["size"]["shortest_edge"], ip["size"]["longest_edge"]
        )
        return (h // factor) * (w // factor)
    raise KeyError(family)
