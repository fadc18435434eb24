"""zspa-serve's command line: what it hands to vllm serve (no server started)."""

from __future__ import annotations

import json

import pytest

from zspa_demo import model as demo
from zspa_vllm import envs
from zspa_serve.cli import build_vllm_argv, enable_plugins, vllm_parser


pytestmark = pytest.mark.usefixtures("restored_environment")  # tests/conftest.py


def parsed(argv):
    vllm_argv = build_vllm_argv(argv)
    assert vllm_argv[0] == "serve"
    return vllm_parser().parse_args(vllm_argv[1:])


def test_knob_flags_become_vllm_mm_processor_kwargs():
    args = parsed(["org/model", "--keep-rate", "0.25", "--core-ratio", "0.4", "--port", "9000"])
    assert args.model_tag == "org/model" and args.port == 9000
    assert args.mm_processor_kwargs == {"keep_rate": "0.25", "core_ratio": "0.4"}


def test_query_scope_is_a_knob_and_the_cache_size_goes_to_the_workers(monkeypatch):
    monkeypatch.setenv("ZSPA_ENCODER_CACHE_MIB", "1")  # so the test's change is undone afterwards
    args = parsed(["org/model", "--keep-rate", "0.5", "--query-scope", "last_turn", "--encoder-cache-mib", "64"])
    assert args.mm_processor_kwargs == {"keep_rate": "0.5", "query_scope": "last_turn"}
    import os

    assert os.environ["ZSPA_ENCODER_CACHE_MIB"] == "64"  # inherited by the engine's processes


def test_media_flags_and_defaults_reach_the_api_server(monkeypatch):
    import os

    from zspa_serve import media

    for name in ("VLLM_MEDIA_CONNECTOR", "VLLM_MAX_IMAGE_PIXELS", envs.ALLOW_PRIVATE_MEDIA_URLS):
        monkeypatch.delenv(name, raising=False)
    build_vllm_argv(["org/model"])
    assert os.environ["VLLM_MEDIA_CONNECTOR"] == media.CONNECTOR_NAME
    assert os.environ["VLLM_MAX_IMAGE_PIXELS"] == str(media.DEFAULT_MAX_IMAGE_PIXELS)
    assert envs.ALLOW_PRIVATE_MEDIA_URLS not in os.environ
    build_vllm_argv(["org/model", "--allow-private-media-urls", "--max-image-pixels", "1000000"])
    assert os.environ[envs.ALLOW_PRIVATE_MEDIA_URLS] == "1" and os.environ["VLLM_MAX_IMAGE_PIXELS"] == "1000000"
    monkeypatch.setenv("VLLM_MEDIA_CONNECTOR", "mine")  # an operator's own connector stays
    build_vllm_argv(["org/model"])
    assert os.environ["VLLM_MEDIA_CONNECTOR"] == "mine"


def test_no_knob_flags_add_nothing():
    args = parsed(["org/model", "--tensor-parallel-size", "2"])
    assert args.mm_processor_kwargs is None and args.tensor_parallel_size == 2


def test_flags_merge_with_the_users_mm_processor_kwargs():
    argv = ["org/model", "--mm-processor-kwargs", json.dumps({"max_pixels": 1000, "keep_rate": 0.5}), "--prune-method", "divprune"]
    assert parsed(argv).mm_processor_kwargs == {"max_pixels": 1000, "keep_rate": 0.5, "prune_method": "divprune"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["m", "--keep-rate", "2"], "keep-rate must be in (0, 1]"),
        (["m", "--core-ratio", "abc"], "core-ratio must be a number"),
        (["m", "--prune-method", "fast"], "prune-method must be one of"),
        (["m", "--query-scope", "all"], "query-scope must be one of ['image_turn', 'last_turn', 'first'], got 'all'"),
        (["m", "--encoder-cache-mib", "-5"], "--encoder-cache-mib must be a whole number of MiB >= 0, got '-5'"),
        (["m", "--encoder-cache-mib", "lots"], "--encoder-cache-mib must be a whole number of MiB >= 0, got 'lots'"),
        (["m", "--keep-rate", "0.5", "--mm-processor-kwargs", '{"keep_rate": 0.25}'], "contradicts"),
        (["m", "--demo"], "--demo serves the built-in demo model"),
        (["m", "--max-image-pixels", "0"], "--max-image-pixels must be a whole number >= 1, got '0'"),
        (["m", "--max-image-pixels", "1e6"], "--max-image-pixels must be a whole number >= 1, got '1e6'"),
    ],
)
def test_bad_command_lines_exit_2_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_vllm_argv(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["--demo"], ["--demo", "--keep-rate", "0.25", "--max-model-len", "2048"]])
def test_no_model_or_demo_serves_the_demo_model(argv):
    args = parsed(argv)
    assert args.model_tag == demo.model_path()
    assert args.served_model_name == [demo.SERVED_NAME]
    assert args.max_model_len == (2048 if "--max-model-len" in argv else 4096)
    assert args.enforce_eager


def test_demo_model_is_the_trained_one_and_says_so():
    import json
    from pathlib import Path

    packaged = Path(demo.model_path())
    info = json.loads((packaged / "demo_model.json").read_text())
    assert info["name"] == demo.SERVED_NAME and info["trained_by"] == "scripts/train_demo_model.py"
    assert json.loads((packaged / "config.json").read_text())["architectures"] == ["LlavaForConditionalGeneration"]
    assert not (packaged / "fixture.json").exists()  # no longer a copy of the random-weight fixture


def test_plugins_are_enabled_next_to_the_users_choice(monkeypatch):
    monkeypatch.setenv("VLLM_PLUGINS", "other")
    enable_plugins()
    import os

    assert set(os.environ["VLLM_PLUGINS"].split(",")) == {"other", "zspa", "zspa_server"}
    monkeypatch.delenv("VLLM_PLUGINS")
    enable_plugins()
    assert {"zspa", "zspa_server"} <= set(os.environ["VLLM_PLUGINS"].split(","))


def test_each_server_publishes_its_counters_in_a_folder_of_its_own(monkeypatch, tmp_path):
    from zspa_serve.cli import own_stats_dir

    monkeypatch.setenv("ZSPA_STATS_DIR", str(tmp_path))  # e.g. inherited from another server
    own_stats_dir()
    import os

    assert os.environ["ZSPA_STATS_DIR"] != str(tmp_path) and os.path.isdir(os.environ["ZSPA_STATS_DIR"])


def test_a_bad_zspa_variable_stops_zspa_serve_at_start_up(monkeypatch, capsys):
    monkeypatch.setenv(envs.MAX_BODY_BYTES, "64MB")
    with pytest.raises(SystemExit) as exit_:
        build_vllm_argv(["org/model"])
    assert exit_.value.code == 2
    assert "ZSPA_MAX_BODY_BYTES must be a whole number of bytes > 0, got '64MB'" in capsys.readouterr().err
