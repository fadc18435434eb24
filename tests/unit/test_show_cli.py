"""zspa-show's refusals: each bad input exits 2 with a message naming it, before any
engine starts."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.engine.harness import fixture_path
from tests.fixtures.images import make_image
from zspa_demo import show


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("show") / "scene.png"
    make_image(64, 48, 1).save(path)
    return path


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
        "no picture geometry for InternVLForConditionalGeneration": [
            str(fixture_path("internvl")), "--image", str(image), *common],
    }
    for message, argv in cases.items():
        assert message in refused(capsys, argv), message
    assert not (tmp_path / "k.png").exists()


def test_argparse_errors_exit_2_too(capsys, image):
    with pytest.raises(SystemExit) as exit_info:
        show.main(["--demo", "--image", str(image)])  # no --question, no --out
    assert exit_info.value.code == 2
    assert "--question" in capsys.readouterr().err
