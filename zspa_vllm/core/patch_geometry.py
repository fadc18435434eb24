"""Where each visual token of an image came from: for token index i (the row order the
model's vision encoder hands to the LLM, which is what ``Selection.kept`` indexes), the box
of the original image its patch covers, as the family's image processor resized, cropped,
padded, tiled or merged it. ``zspa-show`` draws the kept tokens with it.

    geometry = image_geometry(architecture, hf_config, image_processor, (width, height))
    geometry.views            # names of the pictures the tokens fall on ("image", or
                              # LLaVA-NeXT's "overview" and "high-res grid")
    geometry.boxes[i]         # (view, (left, top, right, bottom)) in original pixels, or
                              # None for a token with no place (LLaVA-NeXT's row ends)

Boxes can reach past the image where the processor padded it; callers clip. Only the
families listed in ``GEOMETRIES`` have one; others raise ``NoGeometry``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Box = tuple[float, float, float, float]


class NoGeometry(ValueError):
    """This architecture's token layout is not described here."""


@dataclass(frozen=True)
class Geometry:
    views: tuple[str, ...]
    boxes: tuple[tuple[int, Box] | None, ...]  # per token: (view index, box) or None


def _grid_boxes(rows: int, cols: int, left: float, top: float, cell_w: float, cell_h: float, view: int = 0):
    """Row-major boxes of a rows x cols grid of cells of cell_w x cell_h starting at (left, top)."""
    return [
        (view, (left + c * cell_w, top + r * cell_h, left + (c + 1) * cell_w, top + (r + 1) * cell_h))
        for r in range(rows)
        for c in range(cols)
    ]


def llava(hf_config, image_processor, size: tuple[int, int]) -> Geometry:
    """LLaVA-1.5: shortest edge resized to S, centre crop C x C, patches of P: (C / P)^2 tokens."""
    width, height = size
    shortest = image_processor.size["shortest_edge"]
    crop_w, crop_h = image_processor.crop_size["width"], image_processor.crop_size["height"]
    patch = hf_config.vision_config.patch_size
    # transformers' get_resize_output_image_size (default_to_square=False)
    if width <= height:
        new_w, new_h = shortest, int(shortest * height / width)
    else:
        new_w, new_h = int(shortest * width / height), shortest
    left, top = int(round((new_w - crop_w) / 2.0)), int(round((new_h - crop_h) / 2.0))  # centre crop
    sx, sy = new_w / width, new_h / height
    boxes = _grid_boxes(crop_h // patch, crop_w // patch, left, top, patch, patch)
    return Geometry(("image",), tuple((v, _unscale(b, sx, sy)) for v, b in boxes))


def llava_next(hf_config, image_processor, size: tuple[int, int]) -> Geometry:
    """LLaVA-NeXT ("spatial_unpad"): the whole image squashed to one C x C tile (the
    overview), then the best-fitting grid of C x C tiles over the image resized into it
    and padded at the centre, with padding rows/columns of features removed and an
    ``image_newline`` token ending each row."""
    from transformers.image_processing_utils import select_best_resolution
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    width, height = size
    tile = hf_config.vision_config.image_size
    side = tile // hf_config.vision_config.patch_size  # features per tile side
    cell = tile / side
    overview = _grid_boxes(side, side, 0, 0, width / side, height / side, view=0)

    best_h, best_w = select_best_resolution((height, width), hf_config.image_grid_pinpoints)
    tiles_h, tiles_w = get_anyres_image_grid_shape((height, width), hf_config.image_grid_pinpoints, tile)
    # transformers' get_patch_output_size, then divmod padding at the centre
    scale_w, scale_h = best_w / width, best_h / height
    if scale_w < scale_h:
        new_w, new_h = best_w, min(math.ceil(height * scale_w), best_h)
    else:
        new_w, new_h = min(math.ceil(width * scale_h), best_w), best_h
    paste_x, paste_y = (best_w - new_w) // 2, (best_h - new_h) // 2
    # which feature rows / columns vLLM keeps: unpad_image on a grid of their indices
    import torch

    rows_total, cols_total = tiles_h * side, tiles_w * side
    index = torch.arange(rows_total * cols_total).reshape(1, rows_total, cols_total)
    kept = unpad_image(index, (height, width))[0]
    first = int(kept[0, 0])
    row0, col0 = divmod(first, cols_total)
    rows, cols = kept.shape
    grid: list[tuple[int, Box] | None] = []
    for r in range(rows):
        for c in range(cols):
            x, y = (col0 + c) * cell - paste_x, (row0 + r) * cell - paste_y
            grid.append((1, (x / (new_w / width), y / (new_h / height),
                             (x + cell) / (new_w / width), (y + cell) / (new_h / height))))
        grid.append(None)  # image_newline
    return Geometry(("overview", "high-res grid"), tuple(overview + grid))


def qwen(hf_config, image_processor, size: tuple[int, int]) -> Geometry:
    """Qwen2-VL / 2.5-VL / 3-VL / 3.5: resized to a multiple of patch x merge on each side
    (the processor's own smart resize), tokens are merge x merge patch blocks, row-major."""
    from PIL import Image

    width, height = size
    probe = Image.new("RGB", (width, height))
    grid = image_processor(images=[probe], return_tensors="pt")["image_grid_thw"][0].tolist()
    _, patches_h, patches_w = grid
    patch, merge = image_processor.patch_size, image_processor.merge_size
    sx, sy = patches_w * patch / width, patches_h * patch / height
    block = patch * merge
    boxes = _grid_boxes(patches_h // merge, patches_w // merge, 0, 0, block, block)
    return Geometry(("image",), tuple((v, _unscale(b, sx, sy)) for v, b in boxes))


def gemma3(hf_config, image_processor, size: tuple[int, int]) -> Geometry:
    """Gemma 3 (no pan-and-scan): the image squashed to a square, pooled to k x k tokens."""
    width, height = size
    side = math.isqrt(hf_config.mm_tokens_per_image)
    return Geometry(("image",), tuple(_grid_boxes(side, side, 0, 0, width / side, height / side)))


def _unscale(box: Box, sx: float, sy: float) -> Box:
    return (box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy)


GEOMETRIES = {
    "LlavaForConditionalGeneration": llava,
    "LlavaNextForConditionalGeneration": llava_next,
    "Qwen2VLForConditionalGeneration": qwen,
    "Qwen2_5_VLForConditionalGeneration": qwen,
    "Qwen3VLForConditionalGeneration": qwen,
    "Qwen3VLMoeForConditionalGeneration": qwen,
    "Qwen3_5ForConditionalGeneration": qwen,
    "Qwen3_5MoeForConditionalGeneration": qwen,
    "Gemma3ForConditionalGeneration": gemma3,
}


def image_geometry(architecture: str, hf_config, image_processor, size: tuple[int, int]) -> Geometry:
    if architecture not in GEOMETRIES:
        raise NoGeometry(
            f"zspa-show has no picture geometry for {architecture} (it draws {', '.join(sorted(GEOMETRIES))})"
        )
    return GEOMETRIES[architecture](hf_config, image_processor, size)
