"""vLLM engines for zspa-selfcheck and the tests: one ``vllm.LLM`` in this process at a
time (engine core in-process, one worker), requests as plain specs, answers as records.

A request spec: {"images": [(width, height, seed), ...], "question": str, "system": str?,
"max_tokens": int?, "knobs": {...}?}; images come from zspa_selfcheck.images.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time


def open_engine(model: str, **kwargs):
    """``vllm.LLM(model, **kwargs)``; returns (llm, start-up seconds)."""
    from vllm import LLM, envs

    # vLLM caches its environment variables once an engine has started (enable_envs_cache):
    # read them afresh, so this engine sees the runner (and plugins) set now
    envs.disable_envs_cache()
    t0 = time.perf_counter()
    llm = LLM(model=model, **kwargs)
    return llm, time.perf_counter() - t0


def shutdown(llm) -> None:
    """Free an in-process engine so that another can start."""
    try:
        # frees the executor, undoes vLLM's gc.freeze() and tears down the (single-rank)
        # distributed state
        llm.llm_engine.engine_core.shutdown()
    finally:
        del llm
        gc.collect()


def runner_of(llm) -> str:
    """The model runner the in-process engine's worker really built: "MRv2", "V1", or
    the class name of another."""

    def kind(worker):
        classes = [f"{c.__module__}.{c.__name__}" for c in type(worker.model_runner).__mro__]
        if "vllm.v1.worker.gpu.model_runner.GPUModelRunner" in classes:
            return "MRv2"
        if "vllm.v1.worker.gpu_model_runner.GPUModelRunner" in classes:
            return "V1"
        return classes[0]

    return llm.collective_rpc(kind)[0]


def model_class_of(llm) -> type:
    """The class of the model the (in-process) engine actually runs."""
    return llm.apply_model(lambda model: type(model))[0]


def vllm_class_of(model) -> type:
    """vLLM's own class behind the plugin's override (to call its unpruned methods)."""
    return next(cls for cls in type(model).__mro__ if cls.__module__.startswith("vllm."))


def sampling(max_tokens: int = 3, logprobs: int = -1, **kw):
    """Greedy, fixed length; ``logprobs=-1`` returns every token's logprob per step."""
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=logprobs, ignore_eos=True, **kw)


def request_messages(request: dict) -> list[dict]:
    """OpenAI-style user turn for a request spec: its images, then its question (after
    a system turn if the spec has "system")."""
    from zspa_selfcheck.images import make_image

    parts = [{"type": "image_pil", "image_pil": make_image(w, h, seed)} for w, h, seed in request["images"]]
    if request.get("question"):
        parts.append({"type": "text", "text": request["question"]})
    system = [{"role": "system", "content": request["system"]}] if request.get("system") else []
    return [*system, {"role": "user", "content": parts}]


def chat(llm, request: dict):
    """Run one request spec; its RequestOutput."""
    (out,) = llm.chat(
        request_messages(request),
        sampling(max_tokens=request.get("max_tokens", 3)),
        mm_processor_kwargs=request.get("knobs") or None,
        use_tqdm=False,
    )
    return out


def output_record(output) -> dict:
    return {
        "prompt_token_ids": list(output.prompt_token_ids),
        "token_ids": list(output.outputs[0].token_ids),
        "logprobs": [{str(t): lp.logprob for t, lp in step.items()} for step in output.outputs[0].logprobs],
    }


# vLLM splits VLLM_PLUGINS on "," and loads only the general plugins named in it; ""
# parses to [""], which names none (unset means "load all").
NO_PLUGINS = ""


def child_outputs(model: str, engine_kwargs: dict, requests: list[dict], *, plugin: bool, env=None, timeout: float = 600) -> list[dict]:
    """Records of ``requests`` run on a fresh engine in a child process, with or without
    the plugin: vLLM loads general plugins once per process, and the plugin replaces
    vLLM's model classes for good, so stock vLLM's answers need a process of their own."""
    env = {**os.environ, **(env or {})}
    if plugin:
        env.pop("VLLM_PLUGINS", None)  # load every installed plugin: zspa included
    else:
        env["VLLM_PLUGINS"] = NO_PLUGINS
    spec = json.dumps({"model": model, "engine": engine_kwargs, "requests": requests, "plugin": plugin})
    proc = subprocess.run(
        [sys.executable, "-m", "zspa_selfcheck.child"], input=spec, capture_output=True, text=True, env=env, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child engine run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
