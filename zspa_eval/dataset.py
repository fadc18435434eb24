"""Evaluation rows from a local JSONL file or a Hugging Face ``datasets`` name.

Each row: ``image`` (a path relative to the JSONL file or absolute, an http(s) URL, a
``data:`` URL or bare base64) or ``video`` (a path to a video file, an http(s) URL or a
``data:`` URL), ``question``, ``answer`` and ``type`` (``yesno``, ``mc`` or ``short``); an
optional ``id`` (default: the row number) and ``category`` (any label; the report gives
each category's accuracy). For ``mc`` rows the question should list the
options and the answer is the option letter.
"""

from __future__ import annotations

import base64
import io
import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from zspa_eval.scoring import ANSWER_TYPES


@dataclass(frozen=True)
class Row:
    id: str
    media_url: str  # what goes into the request's image_url or video_url
    question: str
    answer: str
    type: str
    media: str = "image"  # or "video"
    category: str = ""  # optional label the report splits accuracy by


def load_rows(source: str, *, split: str = "test", limit: int | None = None) -> list[Row]:
    path = Path(source)
    if path.suffix == ".jsonl" or path.exists():
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        base = path.parent
    else:
        records, base = _hf_records(source, split), None
    rows = [_row(record, i, base, source) for i, record in enumerate(records)]
    ids = [row.id for row in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: row ids must be unique")
    return rows[:limit] if limit else rows


def _hf_records(name: str, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise SystemExit(f"{name!r} is not a local file; loading a Hugging Face dataset needs `pip install datasets`") from None
    return [dict(record) for record in datasets.load_dataset(name, split=split)]


def _row(record: dict, index: int, base: Path | None, source: str) -> Row:
    where = f"{source} row {index}"
    media = [m for m in ("image", "video") if record.get(m) not in (None, "")]
    if len(media) != 1:
        raise ValueError(f"{where}: needs exactly one of 'image' or 'video', got {media or 'neither'}")
    for field in ("question", "answer", "type"):
        if record.get(field) in (None, ""):
            raise ValueError(f"{where}: missing {field!r}")
    if record["type"] not in ANSWER_TYPES:
        raise ValueError(f"{where}: type must be one of {ANSWER_TYPES}, got {record['type']!r}")
    (kind,) = media
    url = _image_url(record["image"], base, where) if kind == "image" else _video_url(record["video"], base, where)
    return Row(
        id=str(record.get("id", index)),
        media_url=url,
        question=str(record["question"]),
        answer=str(record["answer"]),
        type=record["type"],
        media=kind,
        category=str(record.get("category") or ""),
    )


def _video_url(video, base: Path | None, where: str) -> str:
    if not isinstance(video, str):
        raise ValueError(f"{where}: video must be a path or URL, got {type(video).__name__}")
    if video.startswith(("http://", "https://", "data:")):
        return video
    path = Path(video) if base is None or Path(video).is_absolute() else base / video
    if not path.is_file():
        raise ValueError(f"{where}: video {video[:60]!r} is not a file or URL")
    mime = mimetypes.guess_type(path.name)[0] or "video/mp4"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _image_url(image, base: Path | None, where: str) -> str:
    if not isinstance(image, str):  # a PIL image from a datasets Image column
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    if image.startswith(("http://", "https://", "data:")):
        return image
    path = Path(image) if base is None or Path(image).is_absolute() else base / image
    try:
        is_file = path.is_file()
    except OSError:  # e.g. a name too long to be a path: bare base64
        is_file = False
    if is_file:
        mime = mimetypes.guess_type(path.name)[0] or "image/png"
        return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()
    try:  # bare base64
        base64.b64decode(image, validate=True)
    except ValueError:
        raise ValueError(f"{where}: image {image[:60]!r} is not a file, URL or base64") from None
    return "data:image/png;base64," + image
