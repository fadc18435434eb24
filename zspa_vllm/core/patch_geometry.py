"""Where each visual token of an image came from: for token index i (the row order the
model's vision encoder hands to the LLM, which is what ``Selection.kept`` indexes), the box
of the original image its patch covers, as the family's image processor resized, cropped,
padded, tiled or merged it. ``zspa-show`` draws the kept tokens with it.

    geometry = image_geometry(architecture, hf_config, image_processor, (width, height))
    geometry.views            # names of the pictures the tokens fall on ("image"; LLaVA-
                              # NeXT/OneVision's "overview" and "high-res grid"; InternVL's
                              # tiles and thumbnail; a video's grid steps)
    geometry.boxes[i]         # (view, (left, top, right, bottom)) in original pixels, or
                              # None for a token with no place (LLaVA-NeXT/OneVision's row ends)
    video_geometry(architecture, hf_config, video_processor, (width, height), num_frames)
    geometry.pictures[v]      # videos: the frame view v is drawn on

Boxes can reach past the image where the processor padded it; callers clip. Only the
families listed in ``GEOMETRIES`` (videos: ``VIDEO_GEOMETRIES``) have one; others, and
layouts the plugin refuses to prune (Gemma 3's pan-and-scan), raise ``NoGeometry``.
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
    pictures: tuple[int, ...] = ()  # per view, the video frame it is drawn on (images: none)


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


def _anyres(hf_config, size: tuple[int, int], unpad, max_tiles: int | None) -> Geometry:
    """LLaVA-NeXT / OneVision ("spatial_unpad"): the whole image squashed to one tile (the
    overview), then the best-fitting grid of tiles over the image resized into it and
    padded at the centre, with padding rows/columns of features removed, pooled down
    bilinearly if more than ``max_tiles`` tiles' worth of features remain (OneVision's
    ``anyres_max_N``), and an ``image_newline`` token ending each row."""
    from transformers.image_processing_utils import select_best_resolution
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    width, height = size
    tile = hf_config.vision_config.image_size
    patch = hf_config.vision_config.patch_size
    side = tile // patch  # features per tile side; they cover side * patch <= tile pixels
    overview = _grid_boxes(side, side, 0, 0, width * patch / tile, height * patch / tile, view=0)

    best_h, best_w = select_best_resolution((height, width), hf_config.image_grid_pinpoints)
    tiles_h, tiles_w = get_anyres_image_grid_shape((height, width), hf_config.image_grid_pinpoints, tile)
    # transformers' get_patch_output_size, then divmod padding at the centre
    scale_w, scale_h = best_w / width, best_h / height
    if scale_w < scale_h:
        new_w, new_h = best_w, min(math.ceil(height * scale_w), best_h)
    else:
        new_w, new_h = min(math.ceil(width * scale_h), best_w), best_h
    paste_x, paste_y = (best_w - new_w) // 2, (best_h - new_h) // 2
    # which feature rows / columns vLLM keeps: the family's unpad on a grid of their indices
    import torch

    rows_total, cols_total = tiles_h * side, tiles_w * side
    index = torch.arange(rows_total * cols_total).reshape(1, rows_total, cols_total)
    kept = unpad(index, (height, width))[0]
    row0, col0 = divmod(int(kept[0, 0]), cols_total)
    rows, cols = kept.shape
    out_rows, out_cols = rows, cols
    if max_tiles is not None:  # vLLM's _merge_image_patch_embeddings: bilinear down to this grid
        ratio = math.sqrt(rows * cols / (max_tiles * side**2))
        if ratio > 1.1:
            out_rows, out_cols = int(rows // ratio), int(cols // ratio)

    def pixel(feature: float) -> float:  # a feature row/column edge -> the padded canvas's pixels
        whole, part = divmod(feature, side)
        return whole * tile + part * patch

    sx, sy = new_w / width, new_h / height
    grid: list[tuple[int, Box] | None] = []
    for r in range(out_rows):
        top, bottom = (row0 + r * rows / out_rows, row0 + (r + 1) * rows / out_rows)
        for c in range(out_cols):
            left, right = (col0 + c * cols / out_cols, col0 + (c + 1) * cols / out_cols)
            grid.append((1, ((pixel(left) - paste_x) / sx, (pixel(top) - paste_y) / sy,
                             (pixel(right) - paste_x) / sx, (pixel(bottom) - paste_y) / sy)))
        grid.append(None)  # image_newline
    return Geometry(("overview", "high-res grid"), tuple(overview + grid))


def llava_next(hf_config, image_processor, size: tuple[int, int]) -> Geometry:
    """LLaVA-NeXT: any-resolution tiles, every unpadded feature kept."""
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    return _anyres(hf_config, size, unpad_image, None)


def llava_onevision(hf_config, image_processor, size: tuple[int, int]) -> Geometry:
    """LLaVA-OneVision: as LLaVA-NeXT (SigLIP: 27 features of 14 px cover 378 of each 384 px
    tile), the grid pooled to at most ``anyres_max_N`` tiles' worth of features."""
    from transformers.models.llava_onevision.modeling_llava_onevision import unpad_image

    max_tiles = int(hf_config.vision_aspect_ratio.removeprefix("anyres_max_"))
    return _anyres(hf_config, size, unpad_image, max_tiles)


def internvl(hf_config, image_processor, size: tuple[int, int]) -> Geometry:
    """InternVL: the image squashed onto the tile grid whose aspect ratio is closest to its
    own (1 to max_patches tiles), the tiles row-major, then the whole image squashed to one
    tile (the thumbnail, only when there are several tiles); each tile's features pixel-
    shuffled to k x k tokens, row-major."""
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    width, height = size
    tile_h, tile_w = image_processor.size["height"], image_processor.size["width"]
    cols, rows = get_optimal_tiled_canvas((height, width), (tile_h, tile_w),
                                          image_processor.min_patches, image_processor.max_patches)
    k = math.isqrt(hf_config.image_seq_length)  # tokens per tile side
    tiles_w, tiles_h = width / cols, height / rows  # one tile, in original pixels
    boxes = []
    for t in range(rows * cols):
        row, col = divmod(t, cols)
        boxes += _grid_boxes(k, k, col * tiles_w, row * tiles_h, tiles_w / k, tiles_h / k)
    if rows * cols == 1:
        return Geometry(("image",), tuple(boxes))
    thumbnail = _grid_boxes(k, k, 0, 0, width / k, height / k, view=1)
    return Geometry((f"{rows} x {cols} tiles", "thumbnail"), tuple(boxes + thumbnail))


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
    if getattr(image_processor, "do_pan_and_scan", False):
        raise NoGeometry("zspa-show cannot draw Gemma 3 with pan-and-scan (do_pan_and_scan in the model's processor "
                         "config): the plugin refuses to prune it, since the original image and each crop are separate "
                         "runs and one budget cannot be laid out over them; set do_pan_and_scan false to prune and draw")
    width, height = size
    side = math.isqrt(hf_config.mm_tokens_per_image)
    return Geometry(("image",), tuple(_grid_boxes(side, side, 0, 0, width / side, height / side)))


def qwen_video(hf_config, video_processor, size: tuple[int, int], num_frames: int) -> Geometry:
    """Qwen videos: every frame resized alike (the video processor's own smart resize), each
    ``temporal_patch_size`` consecutive frames merged into one grid step; tokens step by
    step, each step's merge x merge patch blocks row-major. One view per step, drawn on its
    first frame."""
    import numpy as np

    width, height = size
    probe = np.zeros((num_frames, height, width, 3), np.uint8)
    grid = video_processor(videos=[probe], do_sample_frames=False, return_tensors="pt")["video_grid_thw"][0].tolist()
    steps, patches_h, patches_w = grid
    patch, merge, frames = video_processor.patch_size, video_processor.merge_size, video_processor.temporal_patch_size
    sx, sy = patches_w * patch / width, patches_h * patch / height
    block = patch * merge
    boxes = []
    for step in range(steps):
        boxes += [(v, _unscale(b, sx, sy)) for v, b in _grid_boxes(patches_h // merge, patches_w // merge, 0, 0, block, block, step)]
    first = [min(step * frames, num_frames - 1) for step in range(steps)]
    views = tuple(f"frames {f + 1}-{min(f + frames, num_frames)}" if frames > 1 else f"frame {f + 1}" for f in first)
    return Geometry(views, tuple(boxes), tuple(first))


def _unscale(box: Box, sx: float, sy: float) -> Box:
    return (box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy)


GEOMETRIES = {
    "LlavaForConditionalGeneration": llava,
    "LlavaNextForConditionalGeneration": llava_next,
    "LlavaOnevisionForConditionalGeneration": llava_onevision,
    "InternVLForConditionalGeneration": internvl,
    "Qwen2VLForConditionalGeneration": qwen,
    "Qwen2_5_VLForConditionalGeneration": qwen,
    "Qwen3VLForConditionalGeneration": qwen,
    "Qwen3VLMoeForConditionalGeneration": qwen,
    "Qwen3_5ForConditionalGeneration": qwen,
    "Qwen3_5MoeForConditionalGeneration": qwen,
    "Gemma3ForConditionalGeneration": gemma3,
}


VIDEO_GEOMETRIES = {name: qwen_video for name, geometry in GEOMETRIES.items() if geometry is qwen}


def image_geometry(architecture: str, hf_config, image_processor, size: tuple[int, int]) -> Geometry:
    if architecture not in GEOMETRIES:
        raise NoGeometry(
            f"zspa-show has no picture geometry for {architecture} (it draws {', '.join(sorted(GEOMETRIES))})"
        )
    return GEOMETRIES[architecture](hf_config, image_processor, size)


def video_geometry(architecture: str, hf_config, video_processor, size: tuple[int, int], num_frames: int) -> Geometry:
    if architecture not in VIDEO_GEOMETRIES:
        raise NoGeometry(
            f"zspa-show draws videos only for the families that prune them ({', '.join(sorted(VIDEO_GEOMETRIES))}); "
            f"{architecture} serves videos unpruned"
        )
    return VIDEO_GEOMETRIES[architecture](hf_config, video_processor, size, num_frames)
