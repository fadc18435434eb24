"""Every test process (and every engine or server it starts) gets the engine environment
of tests/engine/harness.py: offline, one process, and the model runner (MRv2 unless
VLLM_USE_V2_MODEL_RUNNER=0), so a server test's zspa-serve runs what the engine tests run."""

import os

import pytest

from tests.engine import harness

harness.set_engine_environment()  # before anything imports vLLM


@pytest.fixture
def restored_environment():
    """For tests that run zspa-serve's command-line handling in this process: it sets
    variables for the server's processes (ZSPA_KNOBS_ONLY_MM_KWARGS, VLLM_MEDIA_CONNECTOR,
    ...), which must not reach later tests' engines and servers (a leaked knobs-only flag
    made plain vllm serve refuse other kwargs)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
