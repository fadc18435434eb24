"""zspa_vllm.envs: every ZSPA_* variable declared once, read lazily, a bad value named."""

import re
from pathlib import Path

import pytest

from zspa_vllm import envs
from zspa_vllm.envs import ENCODER_CACHE_MIB, PHASE_TIMINGS, encoder_cache_bytes

REPO = Path(__file__).resolve().parents[2]


def _phase_timings(environ):
    return envs.get(PHASE_TIMINGS, environ)


@pytest.mark.parametrize(
    "value, expected",
    [(None, 512 << 20), ("", 512 << 20), ("0", 0), (" 64 ", 64 << 20), ("4096", 4096 << 30 >> 10)],
)
def test_encoder_cache_size(value, expected):
    environ = {} if value is None else {ENCODER_CACHE_MIB: value}
    assert encoder_cache_bytes(environ) == expected


@pytest.mark.parametrize("value", ["-1", "1.5", "lots", "1e3"])
def test_bad_encoder_cache_size_names_variable_and_value(value):
    with pytest.raises(ValueError) as err:
        encoder_cache_bytes({ENCODER_CACHE_MIB: value})
    assert str(err.value) == f"ZSPA_ENCODER_CACHE_MIB must be a whole number of MiB >= 0, got {value!r}"


@pytest.mark.parametrize("value, expected", [(None, False), ("", False), ("0", False), ("1", True), (" 1 ", True)])
def test_phase_timings_switch(value, expected):
    assert _phase_timings({} if value is None else {PHASE_TIMINGS: value}) is expected


@pytest.mark.parametrize("value", ["yes", "2", "true"])
def test_bad_phase_timings_switch_names_variable_and_value(value):
    with pytest.raises(ValueError, match=rf"^ZSPA_PHASE_TIMINGS must be 0 or 1, got '{value}'$"):
        _phase_timings({PHASE_TIMINGS: value})


@pytest.mark.parametrize("name", [envs.MAX_BODY_BYTES])
@pytest.mark.parametrize("value", ["0", "-5", "64MB"])
def test_bad_byte_size_names_variable_and_value(name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be a whole number of bytes > 0, got '{value}'$"):
        envs.get(name, {name: value})


@pytest.mark.parametrize("name", [envs.ALLOW_PRIVATE_MEDIA_URLS, envs.KNOBS_ONLY_MM_KWARGS, envs.PHASE_TIMINGS])
def test_flags_are_0_or_1(name):
    assert envs.get(name, {}) is False and envs.get(name, {name: "1"}) is True
    with pytest.raises(ValueError, match=rf"^{name} must be 0 or 1, got 'true'$"):
        envs.get(name, {name: "true"})


def test_check_names_the_first_bad_variable():
    envs.check({})  # all unset: fine
    with pytest.raises(ValueError, match=r"^ZSPA_MAX_BODY_BYTES must be"):
        envs.check({envs.ENCODER_CACHE_MIB: "8", envs.MAX_BODY_BYTES: "lots"})


def test_variables_are_read_when_asked_not_at_import(monkeypatch):
    monkeypatch.setenv(envs.MAX_BODY_BYTES, "123")
    assert envs.get(envs.MAX_BODY_BYTES) == 123
    monkeypatch.setenv(envs.MAX_BODY_BYTES, "456")
    assert envs.get(envs.MAX_BODY_BYTES) == 456
    monkeypatch.delenv(envs.MAX_BODY_BYTES)
    assert envs.get(envs.MAX_BODY_BYTES) == envs.DEFAULT_MAX_BODY_BYTES


def test_every_variable_the_packages_read_is_declared():
    """Any ZSPA_* name in the installed packages' code is one of envs.VARIABLES."""
    named, constants = set(), set()
    for package in ("zspa_vllm", "zspa_serve", "zspa_demo", "zspa_eval"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text()
            named |= set(re.findall(r"\b(ZSPA_[A-Z_]+)\b", text))
            constants |= set(re.findall(r"^(ZSPA_[A-Z_]+) =", text, re.M))  # Python names, not variables
    assert named - constants == set(envs.VARIABLES)


def test_the_operations_doc_shows_the_declared_table():
    assert envs.markdown_table() in (REPO / "docs/operations.md").read_text()
