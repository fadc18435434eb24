"""``zspa-show``: which visual tokens a question kept, drawn on the image.

    zspa-show --demo --image scene.png --question "What colour is the square?" \\
        --keep-rates 0.25,0.1 --core-ratios 0,0.2,1 --out kept.png
    zspa-show Qwen/Qwen2.5-VL-3B-Instruct --video clip.mp4 --frames 8 --question "..." --out kept.png

Runs the model in-process on a real vLLM engine with the plugin, one request per setting
(keep rate x core ratio x method), takes the selection the model made and writes one
panel per setting: kept patches at full brightness, core tokens (chosen for their
similarity to the question) outlined in orange, diversity tokens in cyan, dropped
patches dimmed. Each patch is placed where the family's image processor took it from
(``zspa_vllm/core/patch_geometry.py``): the overview and the high-res grid (LLaVA-NeXT,
OneVision), the tiles and the thumbnail (InternVL), or, for a video (the Qwen families),
a strip of frames, one per grid step, each with the kept patches of its step. Next to the PNG, a JSON file says the same as data
(each kept token's index, role and box). Bad input exits 2 with a message naming it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from zspa_vllm.core.params import PRUNE_METHODS, PruneParams, parse_knobs
from zspa_vllm.core.patch_geometry import VIDEO_GEOMETRIES, Geometry, NoGeometry, image_geometry, video_geometry
from zspa_vllm import envs

CORE, DIVERSITY, CAPTION = (255, 140, 0), (0, 200, 230), (20, 20, 20)
PANEL = 360  # pixels: the longer side of each view in a panel
DIM = 0.3  # brightness of dropped patches


@dataclass(frozen=True)
class Panel:
    params: PruneParams
    num_visual: int
    kept: tuple[int, ...]
    core: tuple[int, ...]
    answer: str


class BadInput(Exception):
    """Exit 2 with this message."""


@dataclass(frozen=True)
class Video:
    frames: list  # PIL images, in order
    fps: float  # of these frames (a sampled clip's rate is the file's over the sampling step)

    def as_input(self):
        """vLLM's video input: (frames as one uint8 array, metadata), frames already sampled."""
        import numpy as np

        meta = {"total_num_frames": len(self.frames), "fps": self.fps, "duration": len(self.frames) / self.fps,
                "frames_indices": list(range(len(self.frames))), "video_backend": "opencv", "do_sample_frames": False}
        return np.stack([np.asarray(f.convert("RGB")) for f in self.frames]), meta


def read_video(path: Path, num_frames: int) -> Video:
    """``num_frames`` frames spread evenly over the file, decoded with OpenCV (vLLM's own
    video backend). The model sees these and only these."""
    import cv2
    import numpy as np

    capture = cv2.VideoCapture(str(path))
    total, fps = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), capture.get(cv2.CAP_PROP_FPS) or 1.0
    wanted = sorted(set(np.linspace(0, max(total - 1, 0), num_frames).round().astype(int).tolist()))
    frames, got = [], []
    for index in range(total):
        ok, frame = capture.read()
        if not ok:
            break
        if index in wanted:
            frames.append(Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
            got.append(index)
    capture.release()
    if not frames:
        raise BadInput(f"--video {str(path)!r}: not a video OpenCV can decode")
    if len(frames) < num_frames:
        raise BadInput(f"--video {str(path)!r}: {len(frames)} frames decoded (of {total}), --frames asks for {num_frames}")
    # the frames' own rate: the model's timestamps (Qwen3-VL) must match what it is shown
    step = (got[-1] - got[0]) / (len(got) - 1) if len(got) > 1 else 1
    return Video(frames, fps / step)


def _list(kind):
    def parse(text: str):
        return [kind(v.strip()) for v in text.split(",") if v.strip()]

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zspa-show", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="a model directory or hub name (or --demo)")
    p.add_argument("--demo", action="store_true", help="the built-in demo model (zspa-serve --demo's)")
    p.add_argument("--image", type=Path, help="an image file (or --video)")
    p.add_argument("--video", type=Path, help="a video file (the Qwen families; decoded with OpenCV)")
    p.add_argument("--frames", type=int, default=8,
                   help="--video: how many frames, spread evenly over it (default 8; a multiple of the model's "
                        "temporal patch, 2 for every Qwen)")
    p.add_argument("--question", required=True)
    p.add_argument("--keep-rate", "--keep-rates", dest="keep_rates", type=_list(str), default=["0.1"],
                   help="one or several (comma-separated) keep rates")
    p.add_argument("--core-ratio", "--core-ratios", dest="core_ratios", type=_list(str), default=["0.2"],
                   help="one or several core ratios")
    p.add_argument("--prune-method", "--prune-methods", dest="methods", type=_list(str), default=["zspa"],
                   help=f"one or several of {', '.join(PRUNE_METHODS)}")
    p.add_argument("--max-tokens", type=int, default=8, help="length of each answer shown (default 8)")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--out", required=True, type=Path, help="the PNG to write")
    return p


def settings(keep_rates, core_ratios, methods) -> list[PruneParams]:
    """Every combination, each validated by the plugin's own knob parser; settings that
    make the same selection (divprune, random and relevance ignore the core ratio) appear once."""
    out, seen = [], set()
    for method, keep, core in itertools.product(methods, keep_rates, core_ratios):
        try:
            params = parse_knobs({"prune_method": method, "keep_rate": keep, "core_ratio": core})
        except ValueError as error:
            raise BadInput(str(error)) from None
        # the plugin's selection key: only zspa reads the core ratio
        key = params.canonical() if not params.prunes or params.prune_method == "zspa" else (params.prune_method, params.keep_rate)
        if key not in seen:
            seen.add(key)
            out.append(params)
    return out


def collect(llm, media: Image.Image | Video, question: str, todo: list[PruneParams], log_dir: Path, max_tokens: int = 8):
    """One greedy request per setting on ``llm`` (whose selections are logged to
    ``log_dir`` through ZSPA_SELECTION_LOG), about an image or a video; the panels in order."""
    from vllm import SamplingParams

    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    if isinstance(media, Video):  # vLLM's chat takes videos only as URLs: the template's prompt, the frames as data
        prompt = llm.get_tokenizer().apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}],
            tokenize=False, add_generation_prompt=True)
        video = media.as_input()
    panels = []
    for params in todo:
        before = _logged(log_dir)
        knobs = {"prune_method": params.prune_method, "keep_rate": params.keep_rate, "core_ratio": params.core_ratio}
        if isinstance(media, Video):
            request = {"prompt": prompt, "multi_modal_data": {"video": video}, "mm_processor_kwargs": knobs}
            (out,) = llm.generate(request, sampling, use_tqdm=False)
        else:
            messages = [{"role": "user", "content": [{"type": "image_pil", "image_pil": media},
                                                      {"type": "text", "text": question}]}]
            (out,) = llm.chat(messages, sampling, mm_processor_kwargs=knobs, use_tqdm=False)
        new = _logged(log_dir)[len(before):]
        answer = out.outputs[0].text.strip()
        if not params.prunes:  # no selection: every visual token stays
            panels.append(Panel(params, -1, (), (), answer))
            continue
        if len(new) != 1:
            raise RuntimeError(f"expected one selection for {params.canonical()}, the log has {len(new)}: is the "
                               "zspa plugin loaded, and ZSPA_SELECTION_LOG set before the engine started?")
        (selection,) = new
        panels.append(Panel(params, selection["num_visual"], tuple(selection["kept"]), tuple(selection["core"]), answer))
    return panels


def _logged(log_dir: Path) -> list[dict]:
    lines = []
    for path in sorted(log_dir.glob("selections-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines


GAP, TITLE_H, CAPTION_H, LEGEND_H, VIEW_LABEL_H = 12, 34, 62, 30, 18
LEGEND_W = 770  # the legend's three entries: the canvas is never narrower


def layout(image_size: tuple[int, int], num_views: int, num_panels: int, per_row: int = 3):
    """(view size, image-to-view scale, where view v of panel p starts: a function
    (p, v) -> (x, y), canvas size)."""
    scale = PANEL / max(image_size)
    size = (max(1, round(image_size[0] * scale)), max(1, round(image_size[1] * scale)))
    view_w = size[0] + GAP
    panel_w = view_w * num_views
    panel_h = CAPTION_H + size[1] + (VIEW_LABEL_H if num_views > 1 else 0)
    cols = min(per_row, num_panels)
    rows = -(-num_panels // cols)

    def origin(p: int, v: int) -> tuple[int, int]:
        return GAP + (p % cols) * (panel_w + GAP) + v * view_w, TITLE_H + (p // cols) * (panel_h + GAP) + CAPTION_H

    canvas = (max(LEGEND_W, GAP + cols * (panel_w + GAP)), TITLE_H + rows * (panel_h + GAP) + LEGEND_H)
    return size, scale, origin, canvas


def view_pictures(media: Image.Image | Video, geometry: Geometry, size: tuple[int, int]):
    """Per view, the picture it is drawn on at ``size``, bright and dimmed: the image, or
    the video frame the geometry names."""
    sources = [media.frames[f] for f in geometry.pictures] if isinstance(media, Video) else [media] * len(geometry.views)
    out = []
    for source in sources:
        base = source.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        out.append((base, ImageEnhance.Brightness(base).enhance(DIM)))
    return out


def draw(media: Image.Image | Video, geometry: Geometry, panels: list[Panel], question: str, per_row: int = 3,
         model: str = "") -> Image.Image:
    """The panels in rows of ``per_row`` (each: one picture per view, a caption above),
    the model and question as a title and a legend below."""
    first = media.frames[0] if isinstance(media, Video) else media
    size, scale, origin, canvas_size = layout(first.size, len(geometry.views), len(panels), per_row)
    pictures = view_pictures(media, geometry, size)
    font, small = _font(15), _font(13)
    canvas = Image.new("RGB", canvas_size, "white")
    pen = ImageDraw.Draw(canvas)
    pen.text((GAP, 8), f"{model} | Q: {question}" if model else f"Q: {question}", fill=CAPTION, font=font)
    for p, panel in enumerate(panels):
        x0, y0 = origin(p, 0)
        pen.multiline_text((x0, y0 - CAPTION_H), _caption(panel, geometry), fill=CAPTION, font=small, spacing=3)
        for v, view in enumerate(geometry.views):
            left, top = origin(p, v)
            canvas.paste(_view(*pictures[v], geometry, panel, v, scale), (left, top))
            if len(geometry.views) > 1:
                pen.text((left, top + size[1] + 2), view, fill=CAPTION, font=small)
    y = canvas.height - LEGEND_H + 6
    for x, colour, label in ((GAP, CORE, "core: most similar to the question"),
                             (GAP + 270, DIVERSITY, "diversity: least similar to what was kept"),
                             (GAP + 600, (90, 90, 90), "dimmed: dropped")):
        pen.rectangle((x, y, x + 14, y + 14), outline=colour, width=3)
        pen.text((x + 20, y), label, fill=CAPTION, font=small)
    return canvas


def _view(base, dim, geometry: Geometry, panel: Panel, view: int, scale: float) -> Image.Image:
    if panel.num_visual < 0:  # unpruned: everything stays
        return base.copy()
    picture = dim.copy()
    core = set(panel.core)
    boxes = []
    for index in panel.kept:
        placed = geometry.boxes[index]
        if placed is None or placed[0] != view:
            continue
        box = _clip(tuple(round(c * scale) for c in placed[1]), base.size)
        if box:
            picture.paste(base.crop(box), box[:2])
            boxes.append((box, CORE if index in core else DIVERSITY))
    pen = ImageDraw.Draw(picture)
    for box, colour in boxes:
        pen.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=colour, width=1)
    return picture


def _clip(box, size):
    left, top, right, bottom = max(0, box[0]), max(0, box[1]), min(size[0], box[2]), min(size[1], box[3])
    return (left, top, right, bottom) if right > left and bottom > top else None


def _caption(panel: Panel, geometry: Geometry) -> str:
    p = panel.params
    if panel.num_visual < 0:
        return f"unpruned (keep_rate 1)\nevery visual token kept\nanswer: {panel.answer!r}"
    head = {"zspa": f"zspa, keep {p.keep_rate:g}, core {p.core_ratio:g}", "relevance": f"relevance, keep {p.keep_rate:g}",
            "divprune": f"divprune, keep {p.keep_rate:g}", "random": f"random, keep {p.keep_rate:g}"}[p.prune_method]
    placeless = sum(geometry.boxes[i] is None for i in panel.kept)
    counts = f"{len(panel.kept)} of {panel.num_visual} kept ({len(panel.core)} core)"
    if placeless:
        counts += f", {placeless} row-end"
    return f"{head}\n{counts}\nanswer: {panel.answer!r}"


def _font(size: int):
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def check_geometry(geometry: Geometry, panels: list[Panel]) -> None:
    """Refuse to draw a picture whose geometry disagrees with the model's token count."""
    for panel in panels:
        if panel.num_visual >= 0 and panel.num_visual != len(geometry.boxes):
            raise RuntimeError(f"the model produced {panel.num_visual} visual tokens but the picture geometry has "
                               f"{len(geometry.boxes)}: not drawing misplaced patches")


def as_json(geometry: Geometry, panels: list[Panel], args) -> dict:
    """What the picture shows, as data: per panel the knobs, the answer and each kept
    token's index, role and box in original image pixels."""
    def token(index: int, core: set[int]) -> dict:
        placed = geometry.boxes[index]
        view, box = (geometry.views[placed[0]], [round(c, 2) for c in placed[1]]) if placed else (None, None)
        return {"index": index, "role": "core" if index in core else "diversity", "view": view, "box": box}

    return {
        "model": args.model, "image": str(args.image) if args.image else None,
        "video": str(args.video) if args.video else None, "question": args.question, "views": list(geometry.views),
        "view_frames": list(geometry.pictures) or None,
        "panels": [
            {"prune_method": p.params.prune_method, "keep_rate": p.params.keep_rate, "core_ratio": p.params.core_ratio,
             "answer": p.answer, "num_visual": p.num_visual if p.num_visual >= 0 else len(geometry.boxes),
             "kept": [token(i, set(p.core)) for i in p.kept] if p.num_visual >= 0 else "all"}
            for p in panels
        ],
    }


def _model_info(model: str):
    from transformers import AutoConfig, AutoProcessor

    from zspa_vllm import MODEL_OVERRIDES, NOT_ONE_RUN

    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise BadInput(f"model {model!r}: cannot read its config ({error})") from None
    architecture = (config.architectures or ["?"])[0]
    if architecture not in MODEL_OVERRIDES:
        why = NOT_ONE_RUN.get(architecture, "the plugin does not prune it")
        raise BadInput(f"model {model!r} ({architecture}) is not supported: {why}")
    return config, architecture, AutoProcessor.from_pretrained(model)


def _video_input(args, config, architecture: str, processor):
    """--video: the geometry (refused before anything is decoded for a family that does not
    prune videos) and the frames."""
    video_processor = getattr(processor, "video_processor", None)
    temporal = getattr(video_processor, "temporal_patch_size", 1)
    if architecture not in VIDEO_GEOMETRIES:
        video_geometry(architecture, config, video_processor, (1, 1), args.frames)  # raises NoGeometry, naming why
    if args.frames < 1 or args.frames % temporal:
        raise BadInput(f"--frames must be a positive multiple of {temporal} (the model merges each {temporal} "
                       f"frames into one step), got {args.frames}")
    media = read_video(args.video, args.frames)
    return video_geometry(architecture, config, video_processor, media.frames[0].size, args.frames), media


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.demo == bool(args.model):
            raise BadInput("give a MODEL or --demo (not both)")
        if args.demo:
            from zspa_demo.model import model_path

            args.model = model_path()
        if (args.image is None) == (args.video is None):
            raise BadInput("give --image or --video (one of them)")
        source = args.image or args.video
        if not source.is_file():
            raise BadInput(f"--{'image' if args.image else 'video'} {str(source)!r}: no such file")
        if args.out.suffix.lower() != ".png":
            raise BadInput(f"--out {str(args.out)!r}: must end in .png")
        if args.max_tokens < 1:
            raise BadInput(f"--max-tokens must be at least 1, got {args.max_tokens}")
        todo = settings(args.keep_rates, args.core_ratios, args.methods)
        config, architecture, processor = _model_info(args.model)
        if args.image:
            try:
                media = Image.open(args.image).convert("RGB")
            except OSError as error:
                raise BadInput(f"--image {str(args.image)!r}: not an image ({error})") from None
            geometry = image_geometry(architecture, config, getattr(processor, "image_processor", processor), media.size)
        else:
            geometry, media = _video_input(args, config, architecture, processor)
    except (BadInput, NoGeometry) as error:
        print(f"zspa-show: {error}", file=sys.stderr)
        return 2

    log_dir = Path(tempfile.mkdtemp(prefix="zspa-show-"))
    os.environ[envs.SELECTION_LOG] = str(log_dir)  # before the engine starts: its workers inherit it
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    print(f"zspa-show: starting {args.model} ({architecture}) ...", file=sys.stderr, flush=True)
    video = isinstance(media, Video)
    llm = LLM(model=args.model, max_model_len=args.max_model_len, enforce_eager=True,
              limit_mm_per_prompt={"image": 0 if video else 1, "video": 1 if video else 0},
              dtype="float32" if args.demo else "auto")
    panels = collect(llm, media, args.question, todo, log_dir, args.max_tokens)
    check_geometry(geometry, panels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    name = "demo model" if args.demo else Path(args.model.rstrip("/")).name
    draw(media, geometry, panels, args.question, per_row=1 if video else 3, model=name).save(args.out)
    args.out.with_suffix(".json").write_text(json.dumps(as_json(geometry, panels, args), indent=1) + "\n")
    for panel in panels:
        print(_caption(panel, geometry).replace("\n", " | "))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
