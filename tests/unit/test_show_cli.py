"""zspa-show's refusals: each bad input exits 2 with a message naming it, before any
engine starts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.engine.harness import fixture_path
from tests.fixtures.images import make_image
from zspa_demo import show
from zspa_selfcheck.images import video_mp4


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("show") / "scene.png"
    make_image(64, 48, 1).save(path)
    return path


def write_video(path, frames: int, size=(224, 168)) -> None:
    """Frame i is make_image(*size, 100 + i), 4 fps."""
    path.write_bytes(video_mp4(np.stack([np.asarray(make_image(*size, 100 + i)) for i in range(frames)]), fps=4.0))


def test_read_video_spreads_the_frames_over_the_file(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, 7)  # 4 fps
    video = show.read_video(path, 4)  # frames 0, 2, 4, 6: every second one
    assert len(video.frames) == 4 and video.frames[0].size == (224, 168) and video.fps == 2.0
    frames, meta = video.as_input()
    assert frames.shape == (4, 168, 224, 3) and meta["total_num_frames"] == 4 and meta["do_sample_frames"] is False
    original = [np.asarray(make_image(224, 168, 100 + i), dtype=float) for i in range(7)]
    for got, want in zip(frames, (0, 2, 4, 6)):  # each decoded frame is nearest the one it claims (lossy codec)
        errors = [np.abs(got.astype(float) - frame).mean() for frame in original]
        assert int(np.argmin(errors)) == want, errors


def refused(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(show.main(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_bad_inputs_exit_2_naming_them(capsys, image, tmp_path):
    llava = str(fixture_path("llava-1.5"))
    common = ["--question", "q?", "--out", str(tmp_path / "k.png")]
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    unsupported = tmp_path / "idefics"
    shutil.copytree(fixture_path("llava-1.5"), unsupported)
    config = json.loads((unsupported / "config.json").read_text())
    (unsupported / "config.json").write_text(json.dumps({**config, "architectures": ["Idefics3ForConditionalGeneration"]}))
    qwen = str(fixture_path("qwen2.5-vl"))
    video = tmp_path / "clip.mp4"
    write_video(video, 4)
    pan_and_scan = tmp_path / "gemma3-pan-and-scan"
    shutil.copytree(fixture_path("gemma3"), pan_and_scan)
    processor = json.loads((pan_and_scan / "processor_config.json").read_text())
    processor["image_processor"]["do_pan_and_scan"] = True
    (pan_and_scan / "processor_config.json").write_text(json.dumps(processor))
    cases = {
        "--image '/nonexistent.png': no such file": [llava, "--image", "/nonexistent.png", *common],
        "not an image": [llava, "--image", str(text_file), *common],
        "keep_rate must be in (0, 1], got '1.5'": [llava, "--image", str(image), "--keep-rates", "0.5,1.5", *common],
        "core_ratio must be a number": [llava, "--image", str(image), "--core-ratio", "lots", *common],
        "prune_method must be one of": [llava, "--image", str(image), "--prune-method", "rand", *common],
        "must end in .png": [llava, "--image", str(image), "--question", "q?", "--out", str(tmp_path / "k.jpg")],
        "give a MODEL or --demo": ["--image", str(image), *common],
        "cannot read its config": [str(tmp_path / "missing"), "--image", str(image), *common],
        "is not supported: its image tiles are separate runs": [str(unsupported), "--image", str(image), *common],
        "give --image or --video (one of them)": [llava, *common],
        "give --image or --video (one of them) ": [llava, "--image", str(image), "--video", str(video), *common],
        "--video '/nonexistent.mp4': no such file": [qwen, "--video", "/nonexistent.mp4", *common],
        "LlavaForConditionalGeneration serves videos unpruned": [llava, "--video", str(video), *common],
        "--frames must be a positive multiple of 2 (the model merges each 2 frames into one step), got 3": [
            qwen, "--video", str(video), "--frames", "3", *common],
        "not a video OpenCV can decode": [qwen, "--video", str(text_file), *common],
        f"--video {str(video)!r}: 4 frames decoded (of 4), --frames asks for 8": [qwen, "--video", str(video), *common],
        "cannot draw Gemma 3 with pan-and-scan": [str(pan_and_scan), "--image", str(image), *common],
    }
    for message, argv in cases.items():
        assert message.strip() in refused(capsys, argv), message
    assert not (tmp_path / "k.png").exists()


def test_argparse_errors_exit_2_too(capsys, image):
    with pytest.raises(SystemExit) as exit_info:
        show.main(["--demo", "--image", str(image)])  # no --question, no --out
    assert exit_info.value.code == 2
    assert "--question" in capsys.readouterr().err
