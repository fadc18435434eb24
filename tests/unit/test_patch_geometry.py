"""Token index -> image box, checked against coordinates computed by hand from each
family's processor (the fixtures' real processor configs), and zspa-show's drawing of a
known selection checked pixel by pixel."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.engine.harness import fixture_path
from zspa_demo import show
from zspa_vllm.core.params import PruneParams
from zspa_vllm.core.patch_geometry import NoGeometry, image_geometry, video_geometry


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


def test_llava_onevision_tiles_of_384_with_27_features_of_14_px():
    # 1024x768: best resolution 768x1152 (h x w), 2 x 3 tiles; resized to 1024x768 and
    # padded 64 px each side; 54 x 81 features, unpad keeps columns 4..76 (73 per row);
    # 54 * 73 < 9 tiles' worth (9 * 27^2): not pooled
    g = geometry("llava-onevision", (1024, 768))
    assert g.views == ("overview", "high-res grid")
    assert len(g.boxes) == 27 * 27 + 54 * (73 + 1)
    assert close(g.boxes[0][1], (0, 0, 1024 * 14 / 384, 768 * 14 / 384))  # the overview: 378 of 384 px
    assert close(g.boxes[728][1], (26 * 1024 * 14 / 384, 26 * 768 * 14 / 384, 27 * 1024 * 14 / 384, 27 * 768 * 14 / 384))
    assert g.boxes[729][0] == 1 and close(g.boxes[729][1], (4 * 14 - 64, 0, 5 * 14 - 64, 14))
    assert close(g.boxes[729 + 23][1], (384 + 0 - 64, 0, 384 + 14 - 64, 14))  # column 27: the second tile's first
    assert g.boxes[729 + 73] is None
    assert close(g.boxes[729 + 27 * 74][1], (4 * 14 - 64, 384, 5 * 14 - 64, 398))  # row 27: the second tile row


def test_llava_onevision_pools_a_large_grid_to_nine_tiles_worth():
    # 1500x1500: best resolution 1536x1536, 4 x 4 tiles, no padding, 108 x 108 features;
    # ratio sqrt(108^2 / (9 * 27^2)) = 4/3 > 1.1: bilinear to 81 x 81, each 4/3 features
    g = geometry("llava-onevision", (1500, 1500))
    assert len(g.boxes) == 729 + 81 * 82
    s = 1536 / 1500
    assert close(g.boxes[729][1], (0, 0, 4 / 3 * 14 / s, 4 / 3 * 14 / s))
    assert close(g.boxes[730][1], (4 / 3 * 14 / s, 0, 8 / 3 * 14 / s, 4 / 3 * 14 / s))
    assert g.boxes[729 + 81] is None
    # cell 20 spans features 26.67..28: the end of tile 0 to 1 feature into tile 1
    assert close(g.boxes[729 + 20][1], (80 / 3 * 14 / s, 0, (384 + 14) / s, 4 / 3 * 14 / s))
    assert close(g.boxes[-2][1], ((3 * 384 + (320 / 3 - 81) * 14) / s, (3 * 384 + (320 / 3 - 81) * 14) / s, 1500, 1500))
    assert g.boxes[-1] is None


def test_internvl_tiles_row_major_then_the_thumbnail():
    # 500x300 (aspect 1.67): 3 columns x 2 rows of 448-px tiles is the closest grid (1.5);
    # each tile covers 500/3 x 150 original px, 16 x 16 tokens; then the thumbnail
    g = geometry("internvl", (500, 300))
    assert g.views == ("2 x 3 tiles", "thumbnail") and len(g.boxes) == 7 * 256
    w, h = 500 / 3 / 16, 150 / 16
    assert g.boxes[0] == (0, (0, 0, w, h))
    assert close(g.boxes[17][1], (w, h, 2 * w, 2 * h))  # row 1, column 1 of the first tile
    assert close(g.boxes[256][1], (500 / 3, 0, 500 / 3 + w, h))  # the second tile (row 0, column 1)
    assert close(g.boxes[3 * 256][1], (0, 150, w, 150 + h))  # the fourth (row 1, column 0)
    assert close(g.boxes[6 * 256 - 1][1], (500 - w, 300 - h, 500, 300))
    assert g.boxes[6 * 256] == (1, (0, 0, 500 / 16, 300 / 16))  # the thumbnail squashes the image
    assert close(g.boxes[-1][1], (500 - 500 / 16, 300 - 300 / 16, 500, 300))
    # one tile: no thumbnail
    g = geometry("internvl", (384, 384))
    assert g.views == ("image",) and len(g.boxes) == 256 and close(g.boxes[-1][1], (360, 360, 384, 384))


@pytest.mark.parametrize("family", ["llava-next", "llava-onevision", "internvl", "gemma3"])
def test_token_counts_are_transformers_rows(family):
    """Geometry count = transformers' encoder rows, over sizes that pad, pool and tile."""
    import torch

    from zspa_selfcheck.reference import HF_ROWS, hf_model

    model, processor = hf_model(fixture_path(family))
    for size in ((384, 384), (500, 300), (300, 900), (2000, 500), (1500, 1500), (100, 1000)):
        inputs = processor.image_processor(images=[Image.new("RGB", size)], return_tensors="pt")
        with torch.no_grad():
            rows = HF_ROWS[family](model, inputs).shape[0]
        assert len(image_geometry(model.config.architectures[0], model.config, processor.image_processor, size).boxes) == rows, size


def test_gemma3_pan_and_scan_is_refused_with_the_reason():
    from transformers import AutoConfig, AutoProcessor

    path = fixture_path("gemma3")
    image_processor = AutoProcessor.from_pretrained(path, do_pan_and_scan=True).image_processor
    assert image_processor.do_pan_and_scan
    with pytest.raises(NoGeometry, match="pan-and-scan .* the plugin refuses to prune it"):
        image_geometry("Gemma3ForConditionalGeneration", AutoConfig.from_pretrained(path), image_processor, (800, 400))


def test_qwen_video_one_view_per_two_frames():
    # 4 frames of 224x168 (multiples of 28: no resize): 2 grid steps of 6 x 8 merged tokens
    from transformers import AutoConfig, AutoProcessor

    path = fixture_path("qwen2.5-vl")
    video_processor = AutoProcessor.from_pretrained(path).video_processor
    g = video_geometry("Qwen2_5_VLForConditionalGeneration", AutoConfig.from_pretrained(path), video_processor, (224, 168), 4)
    assert g.views == ("frames 1-2", "frames 3-4") and g.pictures == (0, 2)
    assert len(g.boxes) == 2 * 48
    assert g.boxes[9] == (0, (28, 28, 56, 56))  # row 1, column 1 of the first step
    assert g.boxes[48] == (1, (0, 0, 28, 28))  # the second step starts over
    assert g.boxes[-1] == (1, (196, 140, 224, 168))


def test_an_architecture_without_geometry_is_named():
    with pytest.raises(NoGeometry, match="Idefics3ForConditionalGeneration"):
        image_geometry("Idefics3ForConditionalGeneration", None, None, (10, 10))
    with pytest.raises(NoGeometry, match="LlavaOnevisionForConditionalGeneration serves videos unpruned"):
        video_geometry("LlavaOnevisionForConditionalGeneration", None, None, (10, 10), 4)


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
