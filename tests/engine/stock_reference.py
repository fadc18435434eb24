"""Engine answers computed in a child process (zspa_selfcheck.engine.child_outputs): stock
vLLM, or an engine set up unlike the test process's (e.g. tensor parallel, which needs
worker processes).

vLLM loads general plugins once per process, and the plugin replaces vLLM's model
classes in the registry; so "the same request on stock vLLM" must come from another
process. Images travel as (width, height, seed) triples for zspa_selfcheck.images.

    stock_outputs("llava-1.5", [{"images": [(336, 336, 0)], "question": "...", "max_tokens": 3}])
    -> [{"prompt_token_ids": [...], "token_ids": [...], "logprobs": [{id: lp, ...}, ...]}]

A request may carry "knobs" (its mm_processor_kwargs); engine overrides may name another
"model" directory than the family's fixture. The child inherits the test process's
engine environment (tests/conftest.py).
"""

from __future__ import annotations

from tests.engine import harness
from zspa_selfcheck import engine
from zspa_selfcheck.engine import output_record, request_messages  # noqa: F401  (the tests import them from here)


def stock_outputs(family: str, requests: list[dict], **engine_overrides) -> list[dict]:
    return child_outputs(family, requests, plugin=False, **engine_overrides)


def child_outputs(family: str, requests: list[dict], *, plugin: bool, env=None, **engine_overrides) -> list[dict]:
    """Run ``requests`` on a fresh engine in a child process, with or without the plugin."""
    kwargs = harness.engine_kwargs(family, **engine_overrides)
    return engine.child_outputs(kwargs.pop("model"), kwargs, requests, plugin=plugin, env=env)
