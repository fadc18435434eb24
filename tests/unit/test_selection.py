"""zspa_vllm.core.selection against the reference, plus edge cases, a semantic check and cost checks."""

import contextlib
import math
import subprocess
import sys
from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from zspa_vllm.core import selection
from zspa_vllm.core.selection import METHODS, num_kept, select_tokens, selection_order

# the methods that score the rows (the reference implements them; "random" is tested alone, at the end)
SCORED = tuple(m for m in METHODS if m != "random")

from .reference_prune import reference_select

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# The two greedy loops (selection.py, "Cost"): the CPU's candidate-set loop and the
# accelerators' full-scan loop, which these tests run on the CPU.
LOOPS = ["candidates", "full_scans"]


def _loop(name):
    """Run the selection with the named greedy loop."""
    if name == "candidates":
        return contextlib.nullcontext()
    return mock.patch.object(selection, "HOST_LOOP_DEVICES", ())


# ---------------------------------------------------------------- num_kept


@pytest.mark.parametrize(
    "n, rate, expected",
    [
        (576, 0.1, 58),  # the paper's Table 3
        (576, 0.25, 144),
        (576, 0.5, 288),
        (576, 1.0, 576),
        (576, 1e-9, 1),  # never zero
        (1, 0.01, 1),
        (100, 0.07, 7),  # 0.07 * 100 = 7.000000000000001 in floating point
        (100, 0.29, 29),  # 0.29 * 100 = 28.999999999999996
        (2880, 0.1, 288),
        (16384, 0.1, 1639),
    ],
)
def test_num_kept_table(n, rate, expected):
    assert num_kept(n, rate) == expected


@given(st.integers(1, 100_000), st.floats(1e-6, 1.0), st.floats(1e-6, 1.0))
def test_num_kept_bounds_and_monotone(n, r1, r2):
    low, high = sorted((r1, r2))
    assert 1 <= num_kept(n, low) <= num_kept(n, high) <= n
    assert num_kept(n, high) >= math.floor(high * n)


@pytest.mark.parametrize(
    "n, rate, fragment",
    [
        (0, 0.5, "n must be a positive int, got 0"),
        (True, 0.5, "got True"),
        (10.0, 0.5, "got 10.0"),
        (10, 0.0, "keep_rate must be in (0, 1], got 0.0"),
        (10, 1.5, "got 1.5"),
        (10, -0.1, "got -0.1"),
        (10, float("nan"), "keep_rate must be finite, got nan"),
        (10, float("inf"), "got inf"),
        (10, "0.5", "keep_rate must be a real number, got '0.5'"),
    ],
)
def test_num_kept_rejects(n, rate, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        num_kept(n, rate)


# ---------------------------------------------------------------- against the reference


@st.composite
def pruning_cases(draw):
    n = draw(st.integers(1, 48))
    d = draw(st.integers(1, 12))
    m = draw(st.integers(0, 5))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if draw(st.sampled_from(["gaussian", "grid"])) == "gaussian":
        visual = torch.randn(n, d, generator=gen)
        query = torch.randn(m, d, generator=gen)
    else:  # small integers: many exact ties between different tokens
        visual = torch.randint(-2, 3, (n, d), generator=gen).float()
        query = torch.randint(-2, 3, (m, d), generator=gen).float()
    for src, dst in draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=n)):
        visual[dst] = visual[src]  # duplicate tokens
    for row in draw(st.lists(st.integers(0, n - 1), max_size=2)):
        visual[row] = 0.0  # zero vectors
    dtype = draw(st.sampled_from(DTYPES))
    num_keep = draw(st.one_of(st.just(1), st.just(n), st.integers(1, n)))
    core_ratio = draw(st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0)))
    return dict(
        visual=visual.to(dtype),
        query=query.to(dtype),
        num_keep=num_keep,
        core_ratio=core_ratio,
        method=draw(st.sampled_from(SCORED)),
        pooling=draw(st.sampled_from(selection.POOLINGS)),
    )


@pytest.mark.parametrize("loop", LOOPS)
@given(case=pruning_cases())
def test_matches_reference(loop, case):
    with _loop(loop):
        got = select_tokens(**case)
    assert got.dtype == torch.long
    assert got.tolist() == reference_select(**case)


@given(pruning_cases())
def test_result_is_sorted_unique_and_sized(case):
    got = select_tokens(**case).tolist()
    assert got == sorted(set(got))
    assert len(got) == case["num_keep"]
    assert all(0 <= i < case["visual"].shape[0] for i in got)


def test_reference_is_not_vacuous():
    """The oracle tells methods, ratios and queries apart on one input."""
    gen = torch.Generator().manual_seed(0)
    visual, query = torch.randn(30, 8, generator=gen), torch.randn(3, 8, generator=gen)
    results = {
        (method, ratio): tuple(reference_select(visual, query, 10, ratio, method))
        for method in SCORED
        for ratio in (0.0, 0.5)
    }
    assert len(set(results.values())) >= 4
    other_query = torch.randn(3, 8, generator=gen)
    assert reference_select(visual, query, 10, 0.5) != reference_select(visual, other_query, 10, 0.5)


# ---------------------------------------------------------------- edge cases


def _case(n=24, d=6, m=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen), torch.randn(m, d, generator=gen)


@pytest.mark.parametrize("method", METHODS)
def test_keep_all_returns_every_index(method):
    visual, query = _case()
    assert select_tokens(visual, query, 24, 0.3, method=method).tolist() == list(range(24))


def test_keep_one_with_core_is_most_relevant():
    visual, query = _case()
    relevance = torch.nn.functional.cosine_similarity(visual, query.mean(0, keepdim=True))
    for ratio in (0.0, 1.0):  # k = 0 seeds with the most relevant; k = 1 is the most relevant
        assert select_tokens(visual, query, 1, ratio).item() == int(relevance.argmax())


def test_core_ratio_one_is_relevance_baseline():
    visual, query = _case(n=50)
    ranked = torch.nn.functional.cosine_similarity(visual, query.mean(0, keepdim=True)).argsort(descending=True)
    expected = sorted(ranked[:12].tolist())
    assert select_tokens(visual, query, 12, 1.0).tolist() == expected
    assert select_tokens(visual, query, 12, 0.3, method="relevance").tolist() == expected
    assert select_tokens(visual, query, 12, 0.3).tolist() != expected  # diversity changes it


def test_core_size_rounds_half_up():
    visual, query = _case(n=40)
    order = selection_order(visual, query, 10, 0.25)  # k = floor(2.5 + 0.5) = 3
    relevance = torch.nn.functional.cosine_similarity(visual, query.mean(0, keepdim=True))
    assert order[:3].tolist() == relevance.argsort(descending=True)[:3].tolist()
    assert order[3].item() != relevance.argsort(descending=True)[3].item()


def test_identical_tokens_tie_to_lowest_indices():
    visual = torch.ones(10, 4)
    query = torch.randn(2, 4)
    for method in SCORED:
        for ratio in (0.0, 0.5, 1.0):
            assert select_tokens(visual, query, 4, ratio, method=method).tolist() == [0, 1, 2, 3]


def test_duplicates_are_picked_last():
    base, query = _case(n=6, d=16)
    visual = torch.cat([base, base])  # tokens 6..11 duplicate 0..5
    assert select_tokens(visual, query, 6, 0.0).tolist() == list(range(6))
    assert select_tokens(visual, None, 6, 0.0).tolist() == list(range(6))


def test_zero_vectors_and_zero_query_do_not_produce_nan():
    visual, _ = _case()
    visual[3] = 0
    got = select_tokens(visual, torch.zeros(2, 6), 5, 0.4)
    assert got.tolist() == reference_select(visual, torch.zeros(2, 6), 5, 0.4)
    # a zero query gives no relevance signal: the core is the lowest indices
    assert got[:2].tolist() == [0, 1]


@pytest.mark.parametrize("query", [None, torch.zeros(0, 6)])
def test_no_query_falls_back_to_divprune(query):
    visual, real_query = _case()
    expected = select_tokens(visual, real_query, 7, 0.5, method="divprune")
    assert torch.equal(select_tokens(visual, query, 7, 0.5), expected)
    assert torch.equal(select_tokens(visual, query, 7, 0.5, method="relevance"), expected)


def test_max_pooling_differs_from_mean():
    visual, query = _case(n=60, m=6, seed=3)
    mean = select_tokens(visual, query, 6, 1.0, pooling="mean")
    maxed = select_tokens(visual, query, 6, 1.0, pooling="max")
    assert not torch.equal(mean, maxed)
    assert maxed.tolist() == reference_select(visual, query, 6, 1.0, pooling="max")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_agree_with_float32_on_well_separated_input(dtype):
    visual, query = _case(n=64, d=32)
    visual = visual.to(dtype)
    got = select_tokens(visual, query.to(dtype), 16, 0.25)
    assert got.device == visual.device and got.dtype == torch.long
    assert got.tolist() == reference_select(visual, query.to(dtype), 16, 0.25)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    visual, query = _case(n=576, d=256)
    for method in SCORED:
        cpu = select_tokens(visual, query, 58, 0.2, method=method)
        gpu = select_tokens(visual.cuda().half(), query.cuda().half(), 58, 0.2, method=method)
        assert gpu.is_cuda
        assert gpu.cpu().tolist() == select_tokens(visual.half(), query.half(), 58, 0.2, method=method).tolist()
        assert len(set(cpu.tolist()) & set(gpu.cpu().tolist())) >= 50


# ---------------------------------------------------------------- a semantic check


def test_prompt_word_tokens_form_the_core():
    """Visual tokens are noisy copies of a few 'word' embeddings; a prompt made of one of
    those words must put exactly that word's tokens in the core, and the diversity picks
    must then visit every other word once before repeating any."""
    gen = torch.Generator().manual_seed(7)
    words = torch.randn(8, 64, generator=gen)
    per_word = 12
    owner = torch.arange(8).repeat_interleave(per_word)
    visual = words[owner] + 0.3 * torch.randn(8 * per_word, 64, generator=gen)
    shuffle = torch.randperm(len(visual), generator=gen)
    visual, owner = visual[shuffle], owner[shuffle]
    for word in range(8):
        prompt = words[word : word + 1] + 0.05 * torch.randn(1, 64, generator=gen)
        order = selection_order(visual, prompt, 10 + 7, 10 / 17)  # k = 10 core, 7 diversity
        core, diverse = order[:10], order[10:]
        assert set(owner[core].tolist()) == {word}
        assert sorted(owner[diverse].tolist()) == sorted(set(range(8)) - {word})


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(visual=torch.zeros(5)), "visual must be a 2-D"),
        (dict(visual=torch.zeros(0, 4)), "at least one token"),
        (dict(visual=torch.zeros(5, 4, dtype=torch.long)), "visual must be a floating tensor"),
        (dict(query=torch.zeros(2, 3)), "query width 3 does not match visual width 4"),
        (dict(query=torch.zeros(4)), "query must be a 2-D"),
        (dict(visual=torch.full((5, 4), float("nan"))), "visual contains NaN"),
        (dict(query=torch.full((2, 4), float("inf"))), "query contains NaN or infinity"),
        (dict(num_keep=0), r"num_keep must be in \[1, n=5\], got 0"),
        (dict(num_keep=6), "got 6"),
        (dict(num_keep=2.0), "num_keep must be an int, got 2.0"),
        (dict(core_ratio=-0.1), r"core_ratio must be in \[0, 1\], got -0.1"),
        (dict(core_ratio=1.01), "got 1.01"),
        (dict(core_ratio=float("nan")), "core_ratio must be finite, got nan"),
        (dict(core_ratio="0.2"), "core_ratio must be a real number"),
        (dict(method="rand"), "method must be one of .* got 'rand'"),
        (dict(pooling="median"), "pooling must be one of .* got 'median'"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_value(kwargs, fragment):
    args = dict(visual=torch.randn(5, 4), query=torch.randn(2, 4), num_keep=2, core_ratio=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=fragment):
        select_tokens(**args)


# ---------------------------------------------------------------- cost


class _OpLog(TorchDispatchMode):
    """Records every aten op run and the largest tensor any of them produced."""

    def __init__(self, shapes=False):
        super().__init__()
        self.ops, self.largest = [], 0
        self.shapes = [] if shapes else None  # each op's tensor arguments' row counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append(func)
        if self.shapes is not None:
            self.shapes.append([a.shape[0] if a.dim() else None for a in args if isinstance(a, torch.Tensor)] or [None])
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _run_logged(n, method, num_keep=20, core_ratio=0.25, d=16, loop="full_scans"):
    visual, query = _case(n=n, d=d)
    with _loop(loop), _OpLog() as log:
        select_tokens(visual, query, num_keep, core_ratio, method=method)
    return log


@pytest.mark.parametrize("method", ["zspa", "relevance"])
def test_never_builds_an_n_by_n_matrix(method):
    n, d = 3000, 16
    log = _run_logged(n, method, d=d)
    assert log.largest <= n * d  # the input itself is the largest thing held


def test_divprune_seed_is_computed_in_bounded_blocks(monkeypatch):
    monkeypatch.setattr(selection, "_SEED_BLOCK_ELEMS", 100_000)
    n = 3000
    log = _run_logged(n, "divprune")
    assert log.largest <= 100_000


def test_one_matvec_per_diversity_pick_and_no_python_loop_over_n():
    small, large = _run_logged(200, "zspa"), _run_logged(2000, "zspa")
    assert len(small.ops) == len(large.ops)  # op count independent of n
    matvecs = [op for op in large.ops if op.__name__.split(".")[0] in ("mv", "mm", "addmv", "addmm")]
    k = math.floor(0.25 * 20 + 0.5)
    # relevance (1) + the core's max-similarity (1) + one per pick except the last
    assert len(matvecs) == 1 + 1 + (20 - k - 1)


# aten ops whose result the host must wait for on a GPU: a scalar read (item(), bool(),
# int()) or an output whose size depends on the data
HOST_SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "is_nonzero"}


def _sync_ops(check_values: bool, method: str, core_ratio: float) -> list[str]:
    visual, query = _case(n=300, d=16)
    with _loop("full_scans"), _OpLog() as log:
        select_tokens(visual, query, 30, core_ratio, method=method, check_values=check_values)
    return [op.__name__.split(".")[0] for op in log.ops if op.__name__.split(".")[0] in HOST_SYNC_OPS]


@pytest.mark.parametrize("method, core_ratio", [("zspa", 0.2), ("zspa", 0.0), ("relevance", 1.0), ("divprune", 0.2)])
def test_selection_never_waits_for_the_device(method, core_ratio):
    """What the engine runs on an accelerator (check_values=False, the full-scan loop)
    reads no scalar and makes no data-sized tensor anywhere, in the greedy loop or
    around it; the value check does."""
    assert _sync_ops(False, method, core_ratio) == []
    assert "_local_scalar_dense" in _sync_ops(True, method, core_ratio)


def _full_row_products(log, n):
    """Mat-vecs / mat-muls over all n rows (the memory-bound part of a pick)."""
    return [op for op, shapes in zip(log.ops, log.shapes) if op.__name__.split(".")[0] in ("mv", "mm") and shapes[0] == n]


@pytest.mark.parametrize("kind", ["gaussian", "clustered", "duplicates"])
def test_candidate_loop_picks_what_full_scans_pick_with_few_full_products(kind):
    """The CPU loop gives the full-scan loop's order (not only its set), while reading
    all n rows only a few times instead of once per pick."""
    n, d, num_keep = 2000, 48, 200
    gen = torch.Generator().manual_seed(7)
    if kind == "gaussian":
        visual = torch.randn(n, d, generator=gen)
    else:  # correlated tokens around a few centres, as a vision encoder's are
        centres = torch.randn(8, d, generator=gen)
        visual = centres[torch.randint(0, 8, (n,), generator=gen)] + 0.5 * torch.randn(n, d, generator=gen)
    if kind == "duplicates":  # many exact ties: the candidate set must widen
        visual[1000:] = visual[:1000]
    query = torch.randn(4, d, generator=gen)
    for method, core_ratio in [("zspa", 0.2), ("zspa", 0.0), ("divprune", 0.0)]:
        with _loop("full_scans"):
            want = selection_order(visual, query, num_keep, core_ratio, method=method)
        with _OpLog(shapes=True) as log:
            got = selection_order(visual, query, num_keep, core_ratio, method=method)
        assert got.tolist() == want.tolist()
        full = _full_row_products(log, n)
        assert 2 <= len(full) <= 12, (kind, method, len(full))  # full scans: one per pick


def test_candidate_loop_runs_one_torch_mat_vec_per_pick_and_its_bookkeeping_in_numpy():
    """A torch call costs several microseconds on the CPU whatever its size; the loop's
    per-pick reads and updates of a few hundred values run in numpy (selection.py, "Cost"),
    leaving the row's mat-vec (and its row view) as a pick's only torch ops."""
    visual, query = _case(n=2000, d=48)
    num_keep, core_ratio = 400, 0.2
    picks = num_keep - math.floor(core_ratio * num_keep + 0.5)
    with _OpLog() as log:
        select_tokens(visual, query, num_keep, core_ratio)
    assert sum(op.__name__.split(".")[0] == "mv" for op in log.ops) >= picks - 1
    assert len(log.ops) < 4 * picks  # 15 per pick when the loop ran in torch


def test_rows_that_require_grad_select_as_their_values_do():
    visual, query = _case(n=300, d=16)
    assert torch.equal(select_tokens(visual.requires_grad_(), query, 30, 0.2), select_tokens(visual.detach(), query, 30, 0.2))


def test_candidate_loop_is_the_cpu_default():
    visual, query = _case(n=2000, d=16)
    with _OpLog(shapes=True) as log:
        select_tokens(visual, query, 200, 0.2)
    assert len(_full_row_products(log, 2000)) < 20
    with _loop("full_scans"), _OpLog(shapes=True) as log:
        select_tokens(visual, query, 200, 0.2)
    assert len(_full_row_products(log, 2000)) > 150


def test_without_the_value_check_the_selection_is_the_same():
    for seed in range(5):
        visual, query = _case(n=200, d=24, seed=seed)
        for method in METHODS:
            assert torch.equal(
                select_tokens(visual, query, 20, 0.3, method=method, check_values=False),
                select_tokens(visual, query, 20, 0.3, method=method),
            )


def test_prune_does_not_import_vllm():
    code = "import sys, zspa_vllm.core.selection; sys.exit('vllm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("core_ratio", [0.0, 0.1, 0.25, 0.5, 0.99, 1.0])
def test_the_models_integer_core_is_the_ratios_core(method, core_ratio):
    """The model passes the processor's core count; it orders exactly as the ratio does."""
    from zspa_vllm.core.selection import selection_order_with_core

    generator = torch.Generator().manual_seed(7)
    visual, query = torch.randn(40, 16, generator=generator), torch.randn(5, 16, generator=generator)
    for num_keep in (1, 3, 10, 17, 40):
        num_core = math.floor(core_ratio * num_keep + 0.5)
        want = selection_order(visual, query, num_keep, core_ratio, method=method)
        assert torch.equal(selection_order_with_core(visual, query, num_keep, num_core, method=method), want)
    if method == "zspa":  # sensitive: one core token more orders differently
        assert not torch.equal(selection_order_with_core(visual, query, 10, 4), selection_order_with_core(visual, query, 10, 3))


@pytest.mark.parametrize("num_core", [-1, 11, 2.0, True])
def test_a_bad_core_count_is_named(num_core):
    from zspa_vllm.core.selection import selection_order_with_core

    with pytest.raises(ValueError, match=r"^num_core must be an int in \[0, num_keep=10\], got"):
        selection_order_with_core(torch.randn(20, 4), None, 10, num_core)


# --------------------------------------------------------------------------- random
def test_random_is_uniform_reproducible_by_seed_and_question_free():
    """"random" keeps l distinct tokens drawn uniformly: the same for one seed whatever
    the rows and the question, another set for another seed, each token about equally
    often over seeds (UniPruneBench's baseline)."""
    n, keep = 200, 20
    visual, query = torch.randn(n, 16), torch.randn(3, 16)
    kept = select_tokens(visual, query, keep, 0.2, method="random", seed=7)
    assert kept.tolist() == sorted(set(kept.tolist())) and len(kept) == keep
    assert torch.equal(select_tokens(torch.randn(n, 16), None, keep, 0.9, method="random", seed=7), kept)
    assert not torch.equal(select_tokens(visual, query, keep, 0.2, method="random", seed=8), kept)
    assert not torch.equal(kept, select_tokens(visual, query, keep, 0.2))  # not zspa's either
    counts = torch.zeros(n)
    for seed in range(2000):
        counts[select_tokens(visual, query, keep, 0.2, method="random", seed=seed)] += 1
    # each token: Binomial(2000, 0.1), mean 200, sd 13.4; 5.5 sd either side
    assert 126 < counts.min() and counts.max() < 274 and counts.sum() == 2000 * keep
    # a smaller budget keeps a subset of a larger one's tokens
    assert set(select_tokens(visual, query, 5, 0.2, method="random", seed=7).tolist()) < set(kept.tolist())


def test_random_seed_reads_the_content_key():
    from zspa_vllm.core.selection import random_seed

    key = bytes(range(32))
    assert random_seed(key) == int.from_bytes(key[:8], "little") == random_seed(key[:8] + bytes(24))
    assert random_seed(bytes(32)) != random_seed(bytes([1]) + bytes(31))
