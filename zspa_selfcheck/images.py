"""Deterministic images for zspa-selfcheck and the tests.

``make_image(width, height, seed)`` returns the same RGB ``PIL.Image`` for the same
arguments on every machine: a smooth two-colour gradient with a few filled rectangles
and discs and mild noise, all drawn from ``numpy.random.default_rng(seed)``. The
structure (edges, flat regions, texture) gives a vision encoder something to respond
to, and different seeds give clearly different images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["make_image", "make_images", "make_video", "video_mp4"]


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image of ``width`` x ``height`` pixels determined by ``seed``."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    rng = np.random.default_rng(seed)

    ys = np.linspace(0.0, 1.0, height, dtype=np.float64)[:, None, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float64)[None, :, None]
    c0, c1, c2 = rng.uniform(0.0, 255.0, size=(3, 3))
    img = c0 + (c1 - c0) * xs + (c2 - c0) * ys  # (h, w, 3) gradient
    img = np.broadcast_to(img, (height, width, 3)).copy()

    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(int(rng.integers(3, 7))):
        colour = rng.uniform(0.0, 255.0, size=3)
        x0, x1 = np.sort(rng.integers(0, width + 1, size=2))
        y0, y1 = np.sort(rng.integers(0, height + 1, size=2))
        img[y0:y1, x0:x1] = colour
    for _ in range(int(rng.integers(2, 5))):
        colour = rng.uniform(0.0, 255.0, size=3)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.05, 0.3) * min(width, height)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = colour

    img += rng.normal(0.0, 8.0, size=img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).convert("RGB")


def make_images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    """One image per ``(width, height)``; image ``i`` uses seed ``seed + i``."""
    return [make_image(w, h, seed + i) for i, (w, h) in enumerate(sizes)]


def make_video(width: int, height: int, frames: int, seed: int = 0, step: int = 8) -> np.ndarray:
    """(frames, height, width, 3) uint8: one ``make_image`` scene the camera pans across,
    ``step`` pixels a frame, so consecutive frames repeat most of their content."""
    scene = np.asarray(make_image(width + step * (frames - 1), height, seed))
    return np.stack([scene[:, step * f : step * f + width] for f in range(frames)])


def video_mp4(frames: np.ndarray, fps: float = 2.0) -> bytes:
    """``frames`` (RGB) encoded as an MPEG-4 file (OpenCV's ``mp4v``; lossy)."""
    import os
    import tempfile

    import cv2

    height, width = frames.shape[1:3]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "video.mp4")
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        with open(path, "rb") as f:
            return f.read()
