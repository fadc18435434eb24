"""How two answers are compared: per-step full-vocabulary logprobs, with tolerances per
dtype. Shared by zspa-selfcheck and the tests (tests/engine/harness.py). No vLLM.

An answer is a vLLM ``RequestOutput`` or a record of one (``engine.output_record``):
{"prompt_token_ids", "token_ids", "logprobs": [{token id: logprob}, ...]}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    schedule: float  # the same request on another schedule, cache or parallelism
    hf: float  # vLLM vs transformers
    steps: int  # generated positions compared


FLOAT32 = Tolerance(schedule=1e-5, hf=1e-4, steps=3)  # observed on CPU: 0 and ~1e-6
# bfloat16 (the hybrid Qwen3.5 families on CPU: vLLM's Gated DeltaNet kernel takes nothing
# else). Rounding one logit near 1 to bfloat16 moves a logprob by ~4e-3: stock vLLM's own
# chunked vs unchunked prefill differ by 3.9e-3, vLLM vs transformers by 4.3e-3..5e-3
# (observed). Near-ties can then flip a later greedy token: compare the first.
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


def tolerance_for(dtype: str) -> Tolerance:
    return FLOAT32 if dtype in ("float32", "float") else BFLOAT16


def step_logprobs(output, step: int = 0) -> dict[int, float]:
    """token id -> logprob of the returned candidates at generated position ``step``."""
    if isinstance(output, dict):
        out = {int(t): lp for t, lp in output["logprobs"][step].items()}
    else:
        out = {tid: lp.logprob for tid, lp in output.outputs[0].logprobs[step].items()}
    # a NaN never passes: max() and every comparison would quietly skip it
    if any(math.isnan(lp) for lp in out.values()):
        raise ValueError(f"NaN logprobs at generated position {step}")
    return out


def generated_ids(output) -> list[int]:
    return list(output["token_ids"]) if isinstance(output, dict) else list(output.outputs[0].token_ids)


def prompt_ids(output) -> list[int]:
    return list(output["prompt_token_ids"]) if isinstance(output, dict) else list(output.prompt_token_ids)


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


@dataclass(frozen=True)
class Comparison:
    worst: float  # the largest |logprob difference| compared
    problem: str | None = None  # why the answers differ beyond the tolerance; None: alike
    near_tie: str | None = None  # a greedy flip the tolerance allows, described


def compare_answers(a, b, atol: float, steps: int) -> Comparison:
    """Do ``a`` and ``b`` (full-vocabulary logprobs) answer alike: every logprob within
    ``atol`` over the first ``steps`` positions, and the same greedy token wherever it was
    not a near-tie. Each logprob may move by ``atol``, so a greedy pick whose top-2 margin
    is at most 2 * atol may flip within the tolerance (bfloat16 fixtures have margins of
    1e-3; with every logprob within ``atol`` no wider margin can flip): the flipped
    position's logprobs are still compared whole, later positions, whose contexts
    differ, are not."""
    worst = 0.0
    for s in range(steps):
        la, lb = step_logprobs(a, s), step_logprobs(b, s)
        if la.keys() != lb.keys():
            return Comparison(math.inf, f"position {s}: other candidate sets")
        worst = max(worst, max(abs(la[t] - lb[t]) for t in la))
        if worst > atol:
            return Comparison(worst, f"position {s}: |dlogprob| {worst:.2e} > {atol:.0e}")
        if generated_ids(a)[s] != generated_ids(b)[s]:
            margin = top2_margin(a, s)
            flip = f"position {s}: greedy {generated_ids(a)[s]} vs {generated_ids(b)[s]}"
            if margin > 2 * atol:
                return Comparison(worst, f"{flip} with a top-2 margin {margin:.2e} > 2 x {atol:.0e}")
            return Comparison(worst, near_tie=f"{flip}, margin {margin:.1e}")
    return Comparison(worst)
