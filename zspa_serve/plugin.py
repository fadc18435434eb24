"""The vLLM endpoint plugin (entry point ``vllm.endpoint_plugins``: ``zspa_server``).

vLLM calls ``attach_router`` while it builds its app, before it adds CORS and API-key
middleware: the middleware added here sits inside those, so an unauthenticated request
gets vLLM's 401 before any of our checks. ``init_state`` records whether the served model
can prune (its architecture has a zspa override).
"""

from __future__ import annotations

from dataclasses import dataclass

from zspa_vllm import MODEL_OVERRIDES, NOT_ONE_RUN
from zspa_vllm.core.params import KNOB_NAMES

PLUGIN_NAME = "zspa_server"


@dataclass(frozen=True)
class Support:
    prunes: bool
    reason: str = ""


def support_for(architectures: list[str], model: str) -> Support:
    if any(arch in MODEL_OVERRIDES for arch in architectures):
        return Support(True)
    for arch in architectures:
        if arch in NOT_ONE_RUN:
            return Support(False, f"model {model!r} ({arch}) cannot be pruned: {NOT_ONE_RUN[arch]}, not one run per image")
    return Support(
        False,
        f"model {model!r} ({', '.join(architectures) or 'unknown architecture'}) is not one of "
        f"{sorted(MODEL_OVERRIDES)}",
    )


class ZspaEndpointPlugin:
    name = PLUGIN_NAME
    required_tasks = ("generate",)

    def attach_router(self, app) -> None:
        from zspa_vllm.vllm_versions import unsupported_reason

        if unsupported_reason() is not None:  # the model plugin stood aside (it logged why)
            return
        from zspa_serve import media
        from zspa_serve.metrics import register_worker_stats_collector
        from zspa_serve.middleware import ZspaMiddleware

        media.install()  # the media connector zspa-serve names, in this (API-server) process
        app.add_middleware(ZspaMiddleware)
        register_worker_stats_collector(app)

    async def init_state(self, engine_client, state, args) -> None:
        from zspa_vllm.vllm_versions import unsupported_reason

        if engine_client is None:  # vLLM's CPU-only render server: nothing to prune
            state.zspa_support = Support(False, "this server has no engine")
            return
        if (reason := unsupported_reason()) is not None:
            state.zspa_support = Support(False, reason)
            return
        config = engine_client.model_config
        support = support_for(list(config.architectures or []), config.model)
        defaults = set(KNOB_NAMES) & set(getattr(args, "mm_processor_kwargs", None) or {})
        if defaults and not support.prunes:
            raise ValueError(f"--mm-processor-kwargs sets {sorted(defaults)}, but {support.reason}")
        state.zspa_support = support
