"""The built-in demo model: tiny LLaVA-1.5 with random weights, served on CPU.

It is the test fixture ``tests/fixtures/models/llava-1.5`` (copied, kept identical by a
test): real CLIP-336 geometry (576 visual tokens per image) and a 2-layer LLM, so the
pruning pipeline runs end to end in seconds. Its answers are meaningless.
"""

from __future__ import annotations

import logging
import os
from importlib.resources import files

SERVED_NAME = "zspa-demo-tiny-llava-RANDOM-WEIGHTS"
BANNER = (
    "DEMO MODEL: a tiny LLaVA-1.5 with RANDOM weights (served as %r). Its answers are "
    "meaningless; it shows the pruning pipeline, token counts and API only."
)
logger = logging.getLogger("zspa-serve")


def model_path() -> str:
    return str(files("server") / "demo_model")


def vllm_args(rest: list[str]) -> list[str]:
    """vllm serve arguments that serve the demo model, around the user's own ``rest``."""
    logging.basicConfig()
    logger.warning(BANNER, SERVED_NAME)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default wants far more
    args = [model_path(), *rest]
    defaults = {"--served-model-name": SERVED_NAME, "--max-model-len": "4096", "--dtype": "float32"}
    for flag, value in defaults.items():
        if not any(a == flag or a.startswith(flag + "=") for a in rest):
            args += [flag, value]
    if "--enforce-eager" not in rest:
        args.append("--enforce-eager")  # no graph compilation: starts in seconds on a CPU
    return args
