"""Helpers for tests that start a real vLLM engine on the tiny fixtures.

``set_engine_environment()`` sets the engine environment variables; tests/conftest.py
calls it before anything imports vLLM. What zspa-selfcheck shares with the tests lives in
zspa_selfcheck/ (engines, comparisons and tolerances, references) and is re-exported here.
Reusable pieces:
  FAMILIES / fixture_path(family)   the tiny random-weight models (tests/families.py)
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
import itertools
import io
import os
import types
import zlib
from collections.abc import Iterator
from typing import Any

from zspa_selfcheck import engine
from zspa_selfcheck.engine import model_class_of, runner_of, sampling, vllm_class_of  # noqa: F401
from zspa_selfcheck.reference import unpruned_rows  # noqa: F401
from zspa_selfcheck.compare import (  # noqa: F401  (the tests import them from here)
    BFLOAT16,
    FLOAT32,
    SEPARATION,
    Tolerance,
    compare_answers,
    generated_ids,
    logprobs_max_diff,
    must_differ_by,
    step_logprobs,
    top2_margin,
)
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
STOCK_VLLM_PLUGINS = engine.NO_PLUGINS


# --------------------------------------------------------------------------- tolerances
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
    if llm is not None:
        engine.shutdown(llm)


def engine_kwargs(family: str, **overrides: Any) -> dict:
    """ENGINE_KWARGS + the family's own settings + overrides ("model": another directory)."""
    own = FAMILIES[family].engine if family in FAMILIES else {}
    kwargs = {**ENGINE_KWARGS, **own, **overrides}
    kwargs.setdefault("model", str(fixture_path(family)))
    return kwargs


def start_engine(family: str, **overrides: Any):
    """Build ``vllm.LLM`` for a fixture with ``engine_kwargs``, after freeing any engine
    still alive. Returns (llm, startup_seconds)."""
    free_engine()
    kwargs = engine_kwargs(family, **overrides)
    llm, seconds = engine.open_engine(kwargs.pop("model"), **kwargs)
    runner = runner_of(llm)
    assert runner == ("MRv2" if mrv2_requested() else "V1"), f"{RUNNER_ENV}={os.environ.get(RUNNER_ENV)!r} but the engine runs {runner}"
    _active["llm"], _active["name"] = llm, family
    STARTUP_SECONDS.append((f"{family} ({runner})", seconds))
    print(f"\n[engine] {family}: LLM(...) start-up {seconds:.1f} s, {runner} runner")
    return llm, seconds


# --------------------------------------------------------------------------- images
# Each test's images come from seeds derived from its own id (tests/engine/conftest.py
# calls seed_images before every test): a test sends the same images alone, in a subset,
# in file order or shuffled, and two tests never share one (an identical image would be
# served from the engine's caches instead of running the encoder and the selection).
_image_seeds: Iterator[int] = itertools.count(1 << 40)


def seed_images(test_id: str) -> None:
    global _image_seeds
    _image_seeds = itertools.count(zlib.crc32(test_id.encode()) * 1000 + (1 << 40))  # 1000 a test


def fresh_seed() -> int:
    """The next seed of the running test's images (zspa_selfcheck.images.make_image)."""
    return next(_image_seeds)


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


def assert_same_answer(a, b, atol: float, steps: int) -> float:
    """``a`` and ``b`` answer alike (zspa_selfcheck.compare.compare_answers: a greedy flip
    only at a near-tie); returns the largest difference seen."""
    result = compare_answers(a, b, atol, steps)
    assert result.problem is None, result.problem
    if result.near_tie:
        print(f"[near-tie] {result.near_tie}")
    return result.worst


def ask(llm, images, question: str, max_tokens: int = 3, system: str | None = None, **knobs):
    """One chat request (images as (width, height, seed), then the question; a system
    turn first if given) with the knobs as its mm_processor_kwargs; clears
    zspa_vllm.worker.selection_log first."""
    from zspa_vllm.worker import selection_log

    selection_log.clear()
    request = {"images": list(images), "question": question, "system": system}
    (out,) = llm.chat(
        engine.request_messages(request), sampling(max_tokens), mm_processor_kwargs=knobs or None, use_tqdm=False
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
