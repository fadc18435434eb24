"""zspa-show on a family's real engine: the selections it draws are the engine's own, and
every patch in the picture is lit and outlined exactly when its token was kept."""

from __future__ import annotations

from PIL import Image, ImageEnhance

from tests.engine.harness import fixture_path
from zspa_demo import show
from zspa_vllm.worker import selection_log
from zspa_vllm.core.patch_geometry import image_geometry


def check_show(llm, family: str, image, question: str, log_dir, monkeypatch) -> None:
    from transformers import AutoConfig, AutoProcessor

    monkeypatch.setenv("ZSPA_SELECTION_LOG", str(log_dir))  # the in-process engine reads it per selection
    selection_log.clear()
    todo = show.settings(["0.25", "0.1"], ["0.5"], ["zspa", "divprune"])
    panels = show.collect(llm, image, question, todo, log_dir)
    assert [(p.kept, p.core) for p in panels] == [(s.kept, s.core) for s in selection_log.RECENT]  # the engine's own
    assert [len(p.core) > 0 for p in panels] == [True, True, False, False]

    path = fixture_path(family)
    config = AutoConfig.from_pretrained(path)
    geometry = image_geometry(config.architectures[0], config, AutoProcessor.from_pretrained(path).image_processor,
                              image.size)
    show.check_geometry(geometry, panels)  # the geometry's token count is the model's
    picture = show.draw(image, geometry, panels, question)  # 4 panels: two rows

    size, scale, origin, _ = show.layout(image.size, len(geometry.views), len(panels))
    base = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)  # as show.draw scales it
    dim = ImageEnhance.Brightness(base).enhance(show.DIM)
    checked = 0
    for p, panel in enumerate(panels):
        kept, core = set(panel.kept), set(panel.core)
        for index, placed in enumerate(geometry.boxes):
            if placed is None:
                continue
            view, box = placed
            box = show._clip(tuple(round(c * scale) for c in box), base.size)
            if box is None or box[2] - box[0] < 3 or box[3] - box[1] < 3:
                continue
            left, top = origin(p, view)

            def pixel(x, y):
                return picture.getpixel((left + x, top + y))

            centre = ((box[0] + box[2]) // 2, (box[1] + box[3]) // 2)
            if index in kept:
                assert pixel(*box[:2]) == (show.CORE if index in core else show.DIVERSITY), (p, index)
                assert pixel(*centre) == base.getpixel(centre), (p, index)
            else:
                assert pixel(*centre) == dim.getpixel(centre), (p, index)
            checked += 1
    assert checked > sum(len(p.kept) for p in panels)
