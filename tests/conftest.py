"""Every test process (and every engine or server it starts) gets the engine environment
of tests/engine/harness.py: offline, one process, and the model runner (MRv2 unless
VLLM_USE_V2_MODEL_RUNNER=0), so a server test's zspa-serve runs what the engine tests run."""

from tests.engine import harness  # noqa: F401
