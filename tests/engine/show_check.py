"""zspa-show on a family's real engine: the selections it draws are the engine's own, and
every patch in the picture is lit and outlined exactly when its token was kept."""

from __future__ import annotations

from tests.engine.harness import fixture_path
from zspa_demo import show
from zspa_vllm.worker import selection_log
from zspa_vllm.core.patch_geometry import image_geometry, video_geometry


def check_show(llm, family: str, media, question: str, log_dir, monkeypatch) -> None:
    """``media``: a PIL image, or a ``show.Video`` (its frames drawn one per grid step)."""
    from transformers import AutoConfig, AutoProcessor

    monkeypatch.setenv("ZSPA_SELECTION_LOG", str(log_dir))  # the in-process engine reads it per selection
    selection_log.clear()
    todo = show.settings(["0.25", "0.1"], ["0.5"], ["zspa", "divprune"])
    panels = show.collect(llm, media, question, todo, log_dir)
    assert [(p.kept, p.core) for p in panels] == [(s.kept, s.core) for s in selection_log.RECENT]  # the engine's own
    assert [len(p.core) > 0 for p in panels] == [True, True, False, False]

    path = fixture_path(family)
    config, processor = AutoConfig.from_pretrained(path), AutoProcessor.from_pretrained(path)
    video = isinstance(media, show.Video)
    first = media.frames[0] if video else media
    if video:
        assert {s.modality for s in selection_log.RECENT} == {"video"}
        geometry = video_geometry(config.architectures[0], config, processor.video_processor, first.size, len(media.frames))
    else:
        geometry = image_geometry(config.architectures[0], config, processor.image_processor, first.size)
    show.check_geometry(geometry, panels)  # the geometry's token count is the model's
    per_row = 1 if video else 3
    picture = show.draw(media, geometry, panels, question, per_row)

    size, scale, origin, _ = show.layout(first.size, len(geometry.views), len(panels), per_row)
    pictures = show.view_pictures(media, geometry, size)  # as show.draw scales them
    checked, views_lit = 0, set()
    for p, panel in enumerate(panels):
        kept, core = set(panel.kept), set(panel.core)
        for index, placed in enumerate(geometry.boxes):
            if placed is None:
                continue
            view, box = placed
            base, dim = pictures[view]
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
                views_lit.add(view)
            else:
                assert pixel(*centre) == dim.getpixel(centre), (p, index)
            checked += 1
    assert checked > sum(len(p.kept) for p in panels)
    assert views_lit == set(range(len(geometry.views)))  # every view (tile set, thumbnail, frame pair) shows kept tokens
