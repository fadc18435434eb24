"""Helpers for tests that start a real vLLM engine on the tiny fixtures.

``set_engine_environment()`` sets the engine environment variables; tests/conftest.py
calls it before anything imports vLLM. Reusable pieces:
  FAMILIES / fixture_path(family)   the tiny random-weight models (scripts/make_fixtures.py)
  ENGINE_KWARGS                     fast single-process CPU engine settings
  start_engine(family, **kw)        build an LLM (freeing any previous one first), timed
  free_engine()                     shut the active engine down and release its memory
  chat_messages(image, question)    an OpenAI-style user turn with one image
  sampling(...)                     greedy SamplingParams with full-vocabulary logprobs
  step_logprobs / logprobs_max_diff compare outputs by logprobs, not only token ids
  visual_tokens(family, w, h)       the model's own visual token count, from its formula

Engines cost several seconds each: share one per fixture across tests (see the
module-scoped fixtures in tests/engine/conftest.py); at most one engine is alive at a time.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import io
import math
import os
import time
import types
from dataclasses import dataclass
from typing import Any

from tests.families import (  # noqa: F401  (the tests import them from here too)
    FAMILIES,
    HYBRID_ENGINE,
    HYBRID_FAMILIES,
    MODELS_DIR,
    QWEN_FAMILIES,
    REPO_ROOT,
    Family,
    fixture_path,
    qwen_smart_resize,
    visual_tokens,
)

# The model runner: vLLM's Model Runner V2 unless the environment says otherwise. It is the
# GPU default since vLLM 0.32 and the only runner of 0.34, so it is what users run;
# VLLM_USE_V2_MODEL_RUNNER=0 runs the same tests on the V1 runner. On this CPU MRv2 needs
# Triton's interpreter and a stand-in "cpu" backend, which only the project's environment
# installs (requirements/triton-interpreter, scripts/bootstrap.sh): the package never does.
RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"
ENGINE_ENVIRONMENT = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine core in-process
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default wants far more
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    RUNNER_ENV: "1",
}


def set_engine_environment() -> None:
    """The test processes' engine environment (where unset), before vLLM is imported
    anywhere in the process: tests/conftest.py calls it first."""
    for name, value in ENGINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    if mrv2_requested():
        try:  # the .pth file loads it at start-up when the variable was set before Python started
            import zspa_triton_interpreter  # noqa: F401
        except ImportError as error:
            raise ImportError("MRv2 on a CPU needs the project environment's Triton interpreter shim: run `make env`") from error


def mrv2_requested() -> bool:
    return os.environ.get(RUNNER_ENV, "").strip().lower() in ("1", "true")


@contextlib.contextmanager
def runner(name: str | None):
    """Engines started inside (child engines included) run vLLM's "V1" or "MRv2" model
    runner; None: the one the environment names."""
    if name is None:
        yield
        return
    assert name in ("V1", "MRv2"), name
    old = os.environ.get(RUNNER_ENV)
    os.environ[RUNNER_ENV] = "1" if name == "MRv2" else "0"
    try:
        yield
    finally:
        os.environ[RUNNER_ENV] = old if old is not None else "1"


# The plugin's entry point name (pyproject: [project.entry-points."vllm.general_plugins"]).
PLUGIN_ENTRY_POINT = "zspa"
# vLLM splits VLLM_PLUGINS on "," and loads only the general plugins named in it; ""
# parses to [""], which names none (unset means "load all").
STOCK_VLLM_PLUGINS = ""


# --------------------------------------------------------------------------- tolerances
@dataclass(frozen=True)
class Tolerance:
    schedule: float  # the same request on another schedule, cache or parallelism
    hf: float  # vLLM vs transformers in float32
    steps: int  # generated positions compared


FLOAT32 = Tolerance(schedule=1e-5, hf=1e-4, steps=3)  # observed: 0 and ~1e-6
# The hybrid Qwen3.5 families run in bfloat16 (vLLM's CPU Gated DeltaNet kernel takes
# nothing else). Rounding one logit near 1 to bfloat16 moves a logprob by ~4e-3: stock
# vLLM's own chunked vs unchunked prefill differ by 3.9e-3, vLLM vs transformers by
# 4.3e-3..5e-3 (observed). Near-ties can then flip a later greedy token: compare the first.
# Sensitivity checks must clear 3x these (must_differ_by): wrong M-RoPE positions move
# Qwen3.5's logprobs by 3.4e-2..6.8e-2.
BFLOAT16 = Tolerance(schedule=1e-2, hf=1e-2, steps=1)
# bfloat16: a wrong answer (position rule, image) must land this many times farther from
# vLLM than the right one (observed: 6-14x)
SEPARATION = 3


def must_differ_by(tol: Tolerance) -> float:
    """What a sensitivity check's difference must exceed: SEPARATION times the equality
    tolerance it backs (so bfloat16's 1e-2 needs 3e-2), and never below 1e-3."""
    return max(1e-3, SEPARATION * tol.schedule)


def tolerance(family: str) -> Tolerance:
    own = FAMILIES[family].engine if family in FAMILIES else {}
    return BFLOAT16 if own.get("dtype") == "bfloat16" else FLOAT32


# Fast, deterministic, single-process CPU engine.
ENGINE_KWARGS: dict[str, Any] = dict(
    dtype="float32",
    max_model_len=8192,
    distributed_executor_backend="uni",
    enforce_eager=True,
    limit_mm_per_prompt={"image": 2, "video": 0},
    max_logprobs=-1,  # allow full-vocabulary logprobs (the vocabularies are ~900 tokens)
    seed=0,
)

# Wall-clock seconds of each LLM(...) construction in this session, in order.
STARTUP_SECONDS: list[tuple[str, float]] = []

_active: dict[str, Any] = {"llm": None, "name": None}


def free_engine() -> None:
    """Shut down the active engine (if any) and release its memory."""
    llm = _active["llm"]
    _active["llm"] = _active["name"] = None
    if llm is None:
        return
    try:
        # In-process engine core: frees the executor, undoes vLLM's gc.freeze() and
        # tears down the (single-rank) distributed state so a new LLM can start.
        llm.llm_engine.engine_core.shutdown()
    finally:
        del llm
        gc.collect()


def start_engine(family: str, **overrides: Any):
    """Build ``vllm.LLM`` for a fixture with ENGINE_KWARGS (+ the family's own settings,
    + overrides), after freeing any engine still alive. Returns (llm, startup_seconds)."""
    free_engine()
    from vllm import LLM

    own = FAMILIES[family].engine if family in FAMILIES else {}
    kwargs = {**ENGINE_KWARGS, **own, **overrides}
    model = kwargs.pop("model", None) or str(fixture_path(family))  # "model": another directory
    from vllm import envs

    # vLLM caches its environment variables once an engine has started (enable_envs_cache):
    # read them afresh, so this engine sees the runner (and plugins) the test set now
    envs.disable_envs_cache()
    t0 = time.perf_counter()
    llm = LLM(model=model, **kwargs)
    seconds = time.perf_counter() - t0
    runner = runner_of(llm)
    assert runner == ("MRv2" if mrv2_requested() else "V1"), f"{RUNNER_ENV}={os.environ.get(RUNNER_ENV)!r} but the engine runs {runner}"
    _active["llm"], _active["name"] = llm, family
    STARTUP_SECONDS.append((f"{family} ({runner})", seconds))
    print(f"\n[engine] {family}: LLM(...) start-up {seconds:.1f} s, {runner} runner")
    return llm, seconds


def runner_of(llm) -> str:
    """The model runner the in-process engine's worker really built: "MRv2" or "V1"."""
    from vllm.v1.worker.gpu.model_runner import GPUModelRunner as V2Runner

    def kind(worker):
        return "MRv2" if isinstance(worker.model_runner, V2Runner) else "V1"

    return llm.collective_rpc(kind)[0]


def model_class_of(llm) -> type:
    """The class of the model the (in-process) engine actually runs."""
    return llm.apply_model(lambda model: type(model))[0]


def vllm_class_of(model) -> type:
    """vLLM's own class behind the plugin's override (to call its unpruned methods)."""
    return next(cls for cls in type(model).__mro__ if cls.__module__.startswith("vllm."))


# --------------------------------------------------------------------------- requests
def image_data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # lossless: decodes to the same pixels
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_messages(image, question: str, *, as_url: bool = False) -> list[dict]:
    """One user turn: the image first, then the question (OpenAI content parts)."""
    if as_url:
        part = {"type": "image_url", "image_url": {"url": image_data_url(image)}}
    else:
        part = {"type": "image_pil", "image_pil": image}
    return [{"role": "user", "content": [part, {"type": "text", "text": question}]}]


def sampling(max_tokens: int = 3, logprobs: int = -1, **kw):
    """Greedy, fixed length; ``logprobs=-1`` returns every token's logprob per step."""
    from vllm import SamplingParams

    return SamplingParams(
        temperature=0.0, max_tokens=max_tokens, logprobs=logprobs, ignore_eos=True, **kw
    )


def step_logprobs(output, step: int = 0) -> dict[int, float]:
    """token id -> logprob of the returned candidates at generated position ``step``, of a
    RequestOutput or of a record from tests/engine/stock_reference.py."""
    if isinstance(output, dict):
        out = {int(t): lp for t, lp in output["logprobs"][step].items()}
    else:
        out = {tid: lp.logprob for tid, lp in output.outputs[0].logprobs[step].items()}
    # a NaN never passes: max() and every comparison would quietly skip it
    assert not any(math.isnan(lp) for lp in out.values()), f"NaN logprobs at generated position {step}"
    return out


def generated_ids(output) -> list[int]:
    return list(output["token_ids"]) if isinstance(output, dict) else list(output.outputs[0].token_ids)


def logprobs_max_diff(a, b, steps: int = 1) -> float:
    """Largest |logprob difference| over the first ``steps`` generated positions.

    Positions after the first one where the greedy tokens differ are not compared (their
    contexts differ); ``inf`` if the two outputs returned different candidate sets."""
    worst = 0.0
    for s in range(steps):
        la, lb = step_logprobs(a, s), step_logprobs(b, s)
        if la.keys() != lb.keys():
            return math.inf
        worst = max(worst, max(abs(la[t] - lb[t]) for t in la))
        if generated_ids(a)[s] != generated_ids(b)[s]:
            break
    return worst


def top2_margin(output, step: int = 0) -> float:
    """How far the greedy token's logprob is above the runner-up's at ``step``."""
    top = sorted(step_logprobs(output, step).values(), reverse=True)
    return top[0] - top[1]


def assert_same_answer(a, b, atol: float, steps: int) -> float:
    """``a`` and ``b`` (outputs or stock records, full-vocabulary logprobs) answer alike:
    every logprob within ``atol`` over the first ``steps`` positions, and the same greedy
    token wherever it was not a near-tie. Each logprob may move by ``atol``, so a greedy
    pick whose top-2 margin is at most 2 * atol may flip within the tolerance (bfloat16
    fixtures have margins of 1e-3; with every logprob within ``atol`` no wider margin can
    flip, the margin assertion states it): the flipped position's logprobs are still
    compared whole, later positions, whose contexts differ, are not. Returns the largest
    difference seen."""
    worst = 0.0
    for s in range(steps):
        la, lb = step_logprobs(a, s), step_logprobs(b, s)
        assert la.keys() == lb.keys(), f"position {s}: other candidate sets"
        worst = max(worst, max(abs(la[t] - lb[t]) for t in la))
        assert worst <= atol, f"position {s}: |dlogprob| {worst:.2e} > {atol:.0e}"
        if generated_ids(a)[s] != generated_ids(b)[s]:
            margin = top2_margin(a, s)
            assert margin <= 2 * atol, f"position {s}: greedy {generated_ids(a)[s]} vs {generated_ids(b)[s]} with a top-2 margin {margin:.2e} > 2 x {atol:.0e}"
            print(f"[near-tie] position {s}: greedy {generated_ids(a)[s]} vs {generated_ids(b)[s]}, margin {margin:.1e}")
            break
    return worst


def ask(llm, images, question: str, max_tokens: int = 3, system: str | None = None, **knobs):
    """One chat request (images as (width, height, seed), then the question; a system
    turn first if given) with the knobs as its mm_processor_kwargs; clears
    zspa_vllm.worker.selection_log first."""
    from tests.engine.stock_reference import request_messages
    from zspa_vllm.worker import selection_log

    selection_log.clear()
    request = {"images": list(images), "question": question, "system": system}
    (out,) = llm.chat(
        request_messages(request), sampling(max_tokens), mm_processor_kwargs=knobs or None, use_tqdm=False
    )
    return out


def scheduler_of(llm):
    """The in-process engine's scheduler."""
    return llm.llm_engine.engine_core.engine_core.scheduler


@contextlib.contextmanager
def stock_encoder_charging(llm):
    """The engine's scheduler charging placeholder counts, as vLLM's own does."""
    from vllm.v1.core.sched.scheduler import Scheduler

    scheduler = scheduler_of(llm)
    scheduler._try_schedule_encoder_inputs = types.MethodType(Scheduler._try_schedule_encoder_inputs, scheduler)
    try:
        yield
    finally:
        del scheduler._try_schedule_encoder_inputs


def check_encoder_steps_fit_the_budget(label: str, llm, run, num_images: int, num_visual: int) -> None:
    """``run()`` sends ``num_images`` new pruned images of ``num_visual`` tokens at once:
    each step hands the model at most the images that fit the scheduler's budgets
    UNPRUNED, while vLLM's own charging (placeholder counts) hands it more on the same
    engine."""
    from zspa_vllm.worker import selection_log

    scheduler = scheduler_of(llm)
    # the encoder budget is max(batched tokens, largest item); a pruned item also keeps
    # within the token budget, which its unpruned placeholders would have had to fit
    budget = min(scheduler.max_num_encoder_input_tokens, scheduler.max_num_scheduled_tokens)
    fit = max(1, budget // num_visual)
    assert fit < num_images, f"{num_images} images of {num_visual} tokens all fit a budget of {budget}"
    batches = {}
    for charging, context in (("zspa", contextlib.nullcontext()), ("stock", stock_encoder_charging(llm))):
        selection_log.clear()
        with context:
            run()
        calls = list(selection_log.ENCODER_CALLS)
        assert sum(c.num_images for c in calls) == num_images
        # each vision-encoder call fits the budget unpruned either way (the model's groups)
        assert max(c.num_visual_tokens for c in calls) <= max(budget, num_visual)
        batches[charging] = [c.batch_images for c in calls]
    print(f"\n[{label} encoder] images per step, budget {budget} = {fit} unpruned: {batches}")
    assert max(batches["zspa"]) <= fit
    assert max(batches["stock"]) > fit


# --------------------------------------------------------------------------- vision tower
def unpruned_rows(model, family: str, inputs):
    """vLLM's own (parent-class) vision encoder + projector of a 1-D RoPE family on the HF
    image processor's outputs for ONE image: its (n, d) rows, as the plugin sees them."""
    import torch

    parent = vllm_class_of(model)
    if family in ("llava-next", "llava-onevision"):
        out = parent.embed_multimodal(model, pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    elif family == "internvl":
        image_token_id = torch.tensor(model.config.image_token_id)
        out = parent.embed_multimodal(
            model, pixel_values=inputs["pixel_values"], image_num_patches=inputs["num_patches"], image_token_id=image_token_id
        )
    elif family == "gemma3":
        out = parent.embed_multimodal(model, pixel_values=inputs["pixel_values"], num_patches=torch.tensor([1]))
    else:  # LLaVA-1.5
        out = parent.embed_multimodal(model, pixel_values=inputs["pixel_values"])
    return out[0]



VISION_TOWER = {**{family: "vision_tower" for family in ("llava-1.5", "llava-next", "llava-onevision", "internvl", "gemma3")}, **{family: "visual" for family in QWEN_FAMILIES}}


def vision_tower_calls(llm, family: str) -> int:
    """Forward calls of the model's vision tower so far (a hook installed on first use):
    the real count of vision-encoder runs, independent of the plugin's bookkeeping."""

    def count(model):
        tower = getattr(model, VISION_TOWER[family])
        if not hasattr(tower, "zspa_test_calls"):
            tower.zspa_test_calls = 0

            def hook(module, args):
                module.zspa_test_calls += 1

            tower.register_forward_pre_hook(hook)
        return tower.zspa_test_calls

    return llm.apply_model(count)[0]


def expected_cached_tokens(prompt: list[int], history: list[list[int]], block_size: int, limit: int | None = None) -> int:
    """What vLLM's prefix cache serves of ``prompt`` when the token sequences of
    ``history`` (earlier prompts + their outputs) are cached and every multimodal item
    in the common prefix has the same identity: the full blocks of the longest common
    prefix, leaving at least one token to compute; ``limit`` caps the common prefix
    (where an item's identity changed)."""
    common = 0
    for earlier in history:
        n = 0
        while n < min(len(prompt), len(earlier)) and prompt[n] == earlier[n]:
            n += 1
        common = max(common, n)
    if limit is not None:
        common = min(common, limit)
    return min(common, len(prompt) - 1) // block_size * block_size
