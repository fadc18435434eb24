"""Token index -> image box, checked against coordinates computed by hand from each
family's processor (the fixtures' real processor configs), and zspa-show's drawing of a
known selection checked pixel by pixel."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.engine.harness import fixture_path
from zspa_demo import show
from zspa_vllm.core.params import PruneParams
from zspa_vllm.core.patch_geometry import NoGeometry, image_geometry


def geometry(family: str, size: tuple[int, int]):
    from transformers import AutoConfig, AutoProcessor

    path = fixture_path(family)
    config = AutoConfig.from_pretrained(path)
    return image_geometry(config.architectures[0], config, AutoProcessor.from_pretrained(path).image_processor, size)


def close(box, want) -> bool:
    return all(abs(a - b) < 1e-3 for a, b in zip(box, want))


def test_llava_1_5_resizes_the_short_side_to_336_and_crops_the_centre():
    # 640x480 -> 448x336 (scale 0.7), centre crop starts at x = 56: 24 x 24 patches of 14
    g = geometry("llava-1.5", (640, 480))
    assert g.views == ("image",) and len(g.boxes) == 576
    assert close(g.boxes[0][1], (80, 0, 100, 20))  # (56 + 0) / 0.7 .. (56 + 14) / 0.7
    assert close(g.boxes[24][1], (80, 20, 100, 40))  # second row
    assert close(g.boxes[575][1], (540, 460, 560, 480))  # (56 + 322) / 0.7 .. 560; 322 / 0.7 .. 480
    # a portrait image: 300x600 -> 336x672, crop starts at y = 168
    g = geometry("llava-1.5", (300, 600))
    assert close(g.boxes[0][1], (0, 150, 300 / 24, 150 + 300 / 24))


def test_llava_next_has_the_overview_then_the_unpadded_grid_with_row_ends():
    # 500x300: best resolution 336x672 (h x w), 1 x 2 tiles; resized to 560x336 and padded
    # 56 px each side; vLLM's unpad keeps feature columns 4..43 (40 per row) of 48, 24 rows
    g = geometry("llava-next", (500, 300))
    assert g.views == ("overview", "high-res grid")
    assert len(g.boxes) == 576 + 24 * (40 + 1)
    assert g.boxes[0] == (0, (0, 0, 500 / 24, 300 / 24))  # the overview squashes the image
    assert close(g.boxes[575][1], (500 - 500 / 24, 300 - 12.5, 500, 300))
    assert g.boxes[576][0] == 1 and close(g.boxes[576][1], (0, 0, 12.5, 12.5))  # (4 * 14 - 56) / 1.12
    assert g.boxes[576 + 40] is None  # image_newline ends the first row
    assert close(g.boxes[576 + 41][1], (0, 12.5, 12.5, 25))
    assert close(g.boxes[576 + 24 * 41 - 2][1], (487.5, 287.5, 500, 300))  # (43 * 14 - 56) / 1.12


def test_qwen_merges_2x2_patches_of_the_smart_resized_image():
    # 640x480 -> 644x476 (multiples of 28): 23 x 17 merged tokens of 28 px
    g = geometry("qwen2.5-vl", (640, 480))
    assert len(g.boxes) == 23 * 17
    sx, sy = 644 / 640, 476 / 480
    assert close(g.boxes[0][1], (0, 0, 28 / sx, 28 / sy))
    assert close(g.boxes[24][1], (28 / sx, 28 / sy, 56 / sx, 56 / sy))  # row 1, column 1
    assert close(g.boxes[-1][1], (22 * 28 / sx, 16 * 28 / sy, 640, 480))


def test_an_architecture_without_geometry_is_named():
    with pytest.raises(NoGeometry, match="InternVLForConditionalGeneration"):
        image_geometry("InternVLForConditionalGeneration", None, None, (10, 10))


def test_the_drawing_outlines_core_and_diversity_and_dims_the_rest():
    g = geometry("llava-1.5", (672, 672))  # 672 -> 336: patch k covers 28 x 28 original pixels
    image = Image.new("RGB", (672, 672), (200, 100, 50))
    panel = show.Panel(PruneParams(0.1, 0.5), 576, kept=(0, 30, 575), core=(30,), answer="x")
    picture = show.draw(image, g, [panel], "q?")
    _, scale, origin, _ = show.layout(image.size, 1, 1)
    left, top = origin(0, 0)

    def at(x, y):  # a pixel of the view, in original image coordinates
        return picture.getpixel((left + round(x * scale), top + round(y * scale)))

    assert at(0, 0) == show.DIVERSITY  # token 0's outline, top-left corner
    assert at(28 * 6, 28) == show.CORE  # token 30 = row 1, column 6
    assert at(28 * 6 + 14, 28 + 14) == (200, 100, 50)  # kept: full brightness inside
    assert at(28 * 10 + 14, 28 * 10 + 14) == tuple(round(c * show.DIM) for c in (200, 100, 50))  # dropped
    assert at(671, 671) != at(28 * 10 + 14, 28 * 10 + 14)  # token 575 kept, bottom-right


def test_settings_are_validated_by_the_plugin_and_deduplicated():
    got = show.settings(["0.25"], ["0", "1"], ["zspa", "divprune"])
    assert [(p.prune_method, p.core_ratio) for p in got] == [("zspa", 0.0), ("zspa", 1.0), ("divprune", 0.0)]
    with pytest.raises(show.BadInput, match="keep_rate"):
        show.settings(["1.5"], ["0"], ["zspa"])
    with pytest.raises(show.BadInput, match="prune_method"):
        show.settings(["0.5"], ["0"], ["nope"])
