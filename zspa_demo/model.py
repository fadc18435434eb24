"""The built-in demo model: a small LLaVA-1.5-architecture model trained only on
synthetic scenes of coloured shapes, with token dropout so that it still answers when
visual tokens are pruned (``scripts/train_demo_model.py``), served on CPU.

It answers questions like "Is there a red circle?", "What colour is the square?" and
"How many triangles are there?" about such scenes (``zspa_demo/scenes.py``), and nothing
else. CLIP 336 input with 28-pixel patches: 144 visual tokens per image.
"""

from __future__ import annotations

import logging
import os
from importlib.resources import files

SERVED_NAME = "zspa-demo-llava-shapes-token-dropout"
BANNER = (
    "DEMO MODEL: a small LLaVA-1.5 trained ONLY on synthetic scenes of coloured shapes, with token "
    "dropout (served as %r). It answers questions about such scenes (zspa_demo/scenes.py) and knows nothing else."
)
logger = logging.getLogger("zspa-serve")


def model_path() -> str:
    return str(files("zspa_demo") / "demo_model")


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
