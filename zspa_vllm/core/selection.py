"""ZSPAPrune token selection and its baselines (arXiv 2510.17197). torch and numpy, no vLLM.

Contract (README.md, "The selection core", has the long form):

  l = num_kept(n, keep_rate) = min(n, max(1, ceil(keep_rate * n)))
  t = pool(query)                          mean (default) or elementwise max of rows
  s_j = cos(t, v_j)                        relevance of each visual token
  core: k = floor(core_ratio * l + 0.5) tokens of highest s   (k = 0: seed with argmax s)
  diversity: until l are kept, add the unkept token whose maximum cosine to any kept
             token is smallest
  return the kept indices, ascending

Methods: "zspa" (the above), "relevance" (k = l: the paper's All-in Task-Relevance
baseline), "divprune" (DivPrune's prompt-agnostic max-min greedy, seeded with the token
whose nearest neighbour is farthest), "random" (l tokens uniformly at random, drawn from
``seed``: the model seeds it from the item's content, so an image always keeps the same
tokens at one budget; UniPruneBench, arXiv 2511.02650, found it beats several published
methods). A query with no rows makes "zspa" and "relevance" fall back to "divprune".

Numerics: similarities are float32 whatever the input dtype; cos with a zero vector is 0.
Two similarities within TIE_TOL count as tied and the lower index wins, so exact
duplicates tie on every device even where the mat-vec rounds them differently.

Cost: O(n * l * d); no n x n matrix is built, except that the DivPrune seed needs every
token's nearest neighbour, O(n^2 * d) computed in row blocks of bounded memory. Two
loops pick the same tokens (up to float32 rounding where two values differ by TIE_TOL):
- on an accelerator, one n x d mat-vec per diversity pick and nothing that waits for the
  device (no host sync) except the NaN / infinity check, which ``check_values=False`` skips;
- on the CPU, where reading a value costs nothing, the picks run over a small candidate
  set (the rows with the lowest bounds), and the other rows catch up in one mat-mul when a
  candidate's value reaches theirs: a mat-vec over all n rows is bound by memory bandwidth,
  a mat-mul is not (LLaVA-NeXT's n=2880, d=4096, l=288: 5x faster, benchmarks/select_bench.py).
  Within a candidate set each pick's bookkeeping runs in numpy (on a few hundred values a
  numpy call costs a tenth of a torch call); its mat-vec stays in torch.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy
import torch

# the model fields carry a method as its index here: append only
METHODS = ("zspa", "relevance", "divprune", "random")
POOLINGS = ("mean", "max")

# Similarities closer than this are ties (broken towards the lower index).
TIE_TOL = 1e-5
# Norms below this are treated as zero (the vector's cosine to anything is 0).
_NORM_EPS = 1e-12
# Bound on the block of similarities held at once by the DivPrune seed (elements).
_SEED_BLOCK_ELEMS = 1 << 24
# Devices whose loop may read values on the host (the candidate-set loop).
HOST_LOOP_DEVICES = ("cpu",)
# Smallest candidate set of the CPU loop (rows); it starts at twice the picks left.
_MIN_CANDIDATES = 64


def random_seed(content_key: bytes) -> int:
    """The "random" method's seed for an item: from its content key (32 bytes naming its
    pixels, processor kwargs and model; never the question)."""
    return int.from_bytes(content_key[:8], "little")


def num_kept(n: int, keep_rate: float) -> int:
    """Number of visual tokens kept out of ``n`` at ``keep_rate`` (0 < keep_rate <= 1).

    ``keep_rate * n`` is rounded to 9 decimals before the ceiling so that products
    such as 0.07 * 100 = 7.000000000000001 give 7, not 8.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rate = _check_real("keep_rate", keep_rate)
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate!r}")
    return min(n, max(1, math.ceil(round(rate * n, 9))))


def select_tokens(
    visual: torch.Tensor,
    query: torch.Tensor | None,
    num_keep: int,
    core_ratio: float,
    *,
    method: str = "zspa",
    pooling: str = "mean",
    check_values: bool = True,
    seed: int = 0,
) -> torch.LongTensor:
    """Indices (ascending, on ``visual``'s device) of the ``num_keep`` tokens to keep.

    visual: (n, d) projected visual tokens of one image.
    query:  (m, d) embeddings of the prompt's query tokens; None or m = 0 means no query.
    check_values: refuse NaN / infinity in the inputs. That check is the selection's only
    wait for the device; ``check_values=False`` selects without ever synchronising.
    seed: what "random" draws from (other methods ignore it).
    """
    order = selection_order(
        visual, query, num_keep, core_ratio, method=method, pooling=pooling, check_values=check_values, seed=seed
    )
    return torch.sort(order).values


def selection_order(
    visual: torch.Tensor,
    query: torch.Tensor | None,
    num_keep: int,
    core_ratio: float,
    *,
    method: str = "zspa",
    pooling: str = "mean",
    check_values: bool = True,
    seed: int = 0,
) -> torch.LongTensor:
    """Like ``select_tokens`` but in the order the tokens were chosen: the core (by
    descending relevance, ties by index), then each diversity pick in turn."""
    _check_inputs(visual, query, num_keep, core_ratio, method, pooling, check_values)
    return _ordered(visual, query, num_keep, math.floor(core_ratio * num_keep + 0.5), method, pooling, seed)


def selection_order_with_core(
    visual: torch.Tensor,
    query: torch.Tensor | None,
    num_keep: int,
    num_core: int,
    *,
    method: str = "zspa",
    pooling: str = "mean",
    check_values: bool = True,
    seed: int = 0,
) -> torch.LongTensor:
    """``selection_order`` with the core given as a count, ``floor(core_ratio * num_keep +
    0.5)`` (the model's form: the processor computed it per item)."""
    _check_inputs(visual, query, num_keep, 0.0, method, pooling, check_values)
    if isinstance(num_core, bool) or not isinstance(num_core, int) or not 0 <= num_core <= num_keep:
        raise ValueError(f"num_core must be an int in [0, num_keep={num_keep}], got {num_core!r}")
    return _ordered(visual, query, num_keep, num_core, method, pooling, seed)


def _ordered(visual, query, num_keep: int, core_size: int, method: str, pooling: str, seed: int = 0) -> torch.LongTensor:
    if method == "random":  # drawn on the host: the same tokens on every device
        order = torch.randperm(visual.shape[0], generator=torch.Generator().manual_seed(seed))[:num_keep]
        return order.to(visual.device)
    unit = _unit_rows(visual)
    if query is None or query.shape[0] == 0:
        method = "divprune"

    if method == "divprune":
        return _greedy_max_min(unit, _most_isolated(unit).reshape(1), num_keep)

    query = query.to(device=visual.device, dtype=torch.float32)
    pooled = query.mean(dim=0) if pooling == "mean" else query.amax(dim=0)
    pooled = pooled / pooled.norm().clamp_min(_NORM_EPS)
    relevance = unit @ pooled  # (n,)

    if method == "relevance":
        core_size = num_keep
    if core_size == 0:
        return _greedy_max_min(unit, _first_extreme(relevance, largest=True).reshape(1), num_keep)
    core = _top_k(relevance, core_size)
    if core_size == num_keep:
        return core
    return _greedy_max_min(unit, core, num_keep)


def _greedy_max_min(unit: torch.Tensor, chosen: torch.Tensor, num_keep: int) -> torch.Tensor:
    """Extend ``chosen`` to ``num_keep`` indices: each pick is the unchosen row whose
    largest cosine to the chosen rows is smallest (ties within TIE_TOL: lowest index)."""
    order = torch.empty(num_keep, dtype=torch.long, device=unit.device)
    order[: chosen.numel()] = chosen
    if chosen.numel() == num_keep:
        return order
    # max cosine of every row to the chosen set; chosen rows are +inf so never re-picked
    max_sim = torch.amax(unit @ unit[chosen].T, dim=1)
    max_sim.index_fill_(0, chosen, math.inf)
    if unit.device.type in HOST_LOOP_DEVICES:
        _pick_from_candidates(unit, max_sim, order, chosen.numel())
    else:
        _pick_by_full_scans(unit, max_sim, order, chosen.numel())
    return order


def _pick_by_full_scans(unit, max_sim, order, start) -> None:
    """Fill ``order[start:]``, one (n x d) mat-vec per pick; no host sync inside the loop."""
    num_keep = order.numel()
    for i in range(start, num_keep):
        # a 1-element index tensor, never a 0-d one: indexing with a 0-d tensor reads
        # its value on the host (a device sync per pick)
        pick = _first_extreme(max_sim, largest=False).reshape(1)
        order[i : i + 1] = pick
        if i + 1 < num_keep:
            torch.maximum(max_sim, (unit @ unit[pick].T).squeeze(1), out=max_sim)
            max_sim.index_fill_(0, pick, math.inf)


def _pick_from_candidates(unit, max_sim, order, start) -> None:
    """Fill ``order[start:]`` with the same picks as ``_pick_by_full_scans``, reading
    values on the host. ``max_sim`` only grows, so a stale value is a lower bound: while
    the smallest up-to-date candidate value stays more than TIE_TOL below every other
    row's bound, the pick (ties included) is among the candidates, and only their
    similarities are needed. Then all rows catch up with the new picks in one mat-mul."""
    n, num_keep = unit.shape[0], order.numel()
    picked, synced, size = start, start, None
    while picked < num_keep:
        if synced < picked:  # every row catches up with the picks since the last round
            new = order[synced:picked]
            torch.maximum(max_sim, torch.amax(unit @ unit[new].T, dim=1), out=max_sim)
            max_sim.index_fill_(0, new, math.inf)
            synced = picked
        size = min(n, size or max(2 * (num_keep - picked), _MIN_CANDIDATES))
        if size < n:
            lowest = torch.topk(max_sim, size + 1, largest=False, sorted=True)
            bound_outside = float(lowest.values[size])
            candidates = torch.sort(lowest.indices[:size]).values  # ascending: ties go low
        else:
            bound_outside = math.inf
            candidates = torch.arange(n, device=unit.device)
        picks = _pick_round(unit[candidates], max_sim[candidates].numpy(), bound_outside, num_keep - picked)
        if picks:
            order[picked : picked + len(picks)] = candidates[picks]
        picked += len(picks)
        size = 2 * size if not picks else None  # no progress: widen the candidate set


def _pick_round(rows: torch.Tensor, sims: numpy.ndarray, bound_outside: float, wanted: int) -> list[int]:
    """Up to ``wanted`` picks among candidate ``rows`` (positions in ``rows``), while the
    lowest value stays more than TIE_TOL below ``bound_outside``. The bookkeeping runs in
    numpy, whose calls on a few hundred values cost a tenth of torch's; the mat-vec stays
    in torch (numpy's BLAS threads would compete with torch's)."""
    picks: list[int] = []
    while len(picks) < wanted:
        lowest = float(sims.min())
        if lowest + TIE_TOL >= bound_outside:
            break  # a row outside the candidates may be (or tie with) the pick
        pos = int(numpy.argmax(sims <= numpy.float32(lowest + TIE_TOL)))
        picks.append(pos)
        if len(picks) < wanted:
            numpy.maximum(sims, torch.mv(rows, rows[pos]).numpy(), out=sims)
            sims[pos] = math.inf
    return picks


def _most_isolated(unit: torch.Tensor) -> torch.Tensor:
    """DivPrune's seed: the row whose nearest other row (by cosine) is farthest."""
    n = unit.shape[0]
    if n == 1:
        return torch.zeros((), dtype=torch.long, device=unit.device)
    nearest = torch.empty(n, dtype=torch.float32, device=unit.device)
    block = max(1, _SEED_BLOCK_ELEMS // n)
    for start in range(0, n, block):
        sims = unit[start : start + block] @ unit.T  # (block, n)
        rows = torch.arange(sims.shape[0], device=unit.device)
        sims[rows, rows + start] = -math.inf  # a row is not its own neighbour
        nearest[start : start + block] = sims.amax(dim=1)
    return _first_extreme(nearest, largest=False)


def _top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k highest scores in descending order; ties (within TIE_TOL) to lower index."""
    ranked = torch.sort(scores, descending=True, stable=True)
    kth = ranked.values[k - 1]
    surely_in = scores > kth + TIE_TOL
    tied = (scores >= kth - TIE_TOL) & ~surely_in
    still_needed = k - surely_in.sum()
    # the lowest-index tied tokens fill the remaining places
    take = surely_in | (tied & (torch.cumsum(tied, dim=0) <= still_needed))
    # the k members in index order (a stable sort, not nonzero(): no host sync)
    members = torch.sort(take.to(torch.uint8), descending=True, stable=True).indices[:k]
    # order the members by (score descending, index ascending), treating ties as equal
    member_scores = scores[members]
    rank_key = torch.where(tied[members], kth, member_scores)
    return members[torch.sort(rank_key, descending=True, stable=True).indices]


def _first_extreme(scores: torch.Tensor, *, largest: bool) -> torch.Tensor:
    """Lowest index whose score is within TIE_TOL of the max (or min); 0-d tensor."""
    if largest:
        near = scores >= scores.max() - TIE_TOL
    else:
        near = scores <= scores.min() + TIE_TOL
    return torch.argmax(near.to(torch.uint8))  # argmax returns the first maximal index


def _unit_rows(visual: torch.Tensor) -> torch.Tensor:
    rows = visual.detach().to(torch.float32)  # a selection has no gradient; numpy needs none
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(_NORM_EPS)


def _check_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _check_inputs(visual, query, num_keep, core_ratio, method, pooling, check_values=True) -> None:
    if not isinstance(visual, torch.Tensor) or visual.dim() != 2:
        shape = tuple(visual.shape) if isinstance(visual, torch.Tensor) else type(visual).__name__
        raise ValueError(f"visual must be a 2-D (n, d) tensor, got {shape}")
    n, d = visual.shape
    if n < 1 or d < 1:
        raise ValueError(f"visual must have at least one token and one channel, got {tuple(visual.shape)}")
    if not visual.is_floating_point():
        raise ValueError(f"visual must be a floating tensor, got dtype {visual.dtype}")
    if query is not None:
        if not isinstance(query, torch.Tensor) or query.dim() != 2:
            shape = tuple(query.shape) if isinstance(query, torch.Tensor) else type(query).__name__
            raise ValueError(f"query must be a 2-D (m, d) tensor or None, got {shape}")
        if query.shape[1] != d:
            raise ValueError(
                f"query width {query.shape[1]} does not match visual width {d} "
                f"(query {tuple(query.shape)}, visual {tuple(visual.shape)})"
            )
        if not query.is_floating_point():
            raise ValueError(f"query must be a floating tensor, got dtype {query.dtype}")
        if check_values and query.numel() and not bool(torch.isfinite(query).all()):
            raise ValueError("query contains NaN or infinity")
    if check_values and not bool(torch.isfinite(visual).all()):
        raise ValueError("visual contains NaN or infinity")
    if isinstance(num_keep, bool) or not isinstance(num_keep, int):
        raise ValueError(f"num_keep must be an int, got {num_keep!r}")
    if not 1 <= num_keep <= n:
        raise ValueError(f"num_keep must be in [1, n={n}], got {num_keep}")
    ratio = _check_real("core_ratio", core_ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"core_ratio must be in [0, 1], got {core_ratio!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
