"""One zspa-show picture per token layout, on the tiny random-weight test fixtures
(``tests/fixtures/models``): where each family's visual tokens lie on the image (LLaVA-1.5's
centre crop, LLaVA-NeXT's and OneVision's overview and grid, InternVL's tiles and
thumbnail, the Qwen families' merged blocks and a video's frame pairs, Gemma 3's pooled
grid). The weights are random, so the pictures show the layouts, not what a trained model
would keep.

    python scripts/draw_geometries.py --out benchmarks/results/show_geometries

Each picture: one zspa-show run (its own engine) at keep_rate 0.25, core_ratio 0.2, saved
as a 64-colour PNG to keep the repository small. About 3 minutes on 2 CPUs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "models"
QUESTION = "Where is the red circle?"

# picture name -> (fixture, image size or None for the video, what it shows)
PICTURES = {
    "llava-1.5": ("llava-1.5", (640, 480), "shortest side to 336, centre crop: the sides stay dimmed"),
    "llava-next": ("llava-next", (1024, 768), "overview tile, then the unpadded 2 x 2 grid with row-end tokens"),
    "llava-onevision": ("llava-onevision", (1536, 1024), "overview, then the grid pooled to 9 tiles' worth"),
    "internvl": ("internvl", (1024, 768), "3 x 4 tiles, then the thumbnail"),
    "gemma3": ("gemma3", (1024, 768), "the image squashed to a square, 16 x 16 pooled tokens"),
    "qwen2.5-vl": ("qwen2.5-vl", (1024, 768), "2 x 2 patch blocks of the smart-resized image"),
    "qwen2.5-vl-video": ("qwen2.5-vl", None, "8 frames of a pan, one picture per pair of frames"),
}


def scene(size: tuple[int, int], seed: int = 42) -> Image.Image:
    """A demo scene (a red circle, a red triangle, a green square; plain colours: small
    PNGs), stretched to ``size``."""
    from zspa_demo.scenes import draw, make_scene

    return draw(make_scene(seed)).resize(size, Image.Resampling.NEAREST)


def video(path: Path, frames: int = 8, size=(448, 336), step: int = 24) -> None:
    """A camera panning across a wide scene, ``step`` pixels a frame."""
    import numpy as np

    from zspa_selfcheck.images import video_mp4

    wide = np.asarray(scene((size[0] + step * (frames - 1), size[1])))
    path.write_bytes(video_mp4(np.stack([wide[:, step * f: step * f + size[0]] for f in range(frames)]), fps=4.0))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "show_geometries")
    parser.add_argument("--only", help="comma-separated picture names (default: all)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(PICTURES)
    unknown = [n for n in names if n not in PICTURES]
    if unknown:
        parser.error(f"--only: unknown {unknown}; choose from {', '.join(PICTURES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names, 1):
            fixture, size, shows = PICTURES[name]
            if size is None:
                media = ["--video", str(Path(tmp) / "pan.mp4"), "--frames", "8"]
                video(Path(tmp) / "pan.mp4")
            else:
                scene(size).save(Path(tmp) / "scene.png")
                media = ["--image", str(Path(tmp) / "scene.png")]
            out = args.out / f"{name}.png"
            print(f"[{i}/{len(names)}] {name}: {shows}", flush=True)
            command = [sys.executable, "-m", "zspa_demo.show", str(FIXTURES / fixture), *media, "--question", QUESTION,
                       "--keep-rate", "0.25", "--core-ratio", "0.2", "--max-tokens", "1", "--out", str(out)]
            run = subprocess.run(command, env=env, capture_output=True, text=True)
            if run.returncode != 0:
                print(run.stderr[-3000:], file=sys.stderr)
                return run.returncode
            Image.open(out).convert("RGB").quantize(64).save(out, optimize=True)
            out.with_suffix(".json").unlink()  # the kept tokens as data: not worth keeping for random weights
            print(f"    {out} ({out.stat().st_size // 1024} KB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
