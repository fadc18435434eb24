"""The checks zspa-selfcheck runs per family, on the user's vLLM and device, against a tiny
random-weight fixture built for the run (zspa_selfcheck/fixtures.py):

  stock          keep_rate 1 answers what stock vLLM (the plugin off, a child process) does
  placeholders   the prompt shrinks by exactly n - l placeholder tokens per image
  selection      the kept indices are select_tokens on the model's own unpruned rows
  transformers   the pruned logprobs equal transformers fed the kept rows (M-RoPE
                 families: at their unpruned positions; Qwen3-VL: with deepstack)
  schedules      chunked prefill with prefix caching off answers what one unchunked
                 step with prefix caching on does, for two questions on one image
  cuda-graphs    (CUDA) the default engine, with CUDA graphs, answers what an eager one does

Every check that compares also shows it can fail: a sensitivity figure (another image,
other rows, other positions, another question) must land far outside the tolerance.
"""

from __future__ import annotations

import concurrent.futures
import math
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zspa_selfcheck import engine, reference
from zspa_selfcheck.compare import Tolerance, compare_answers, logprobs_max_diff, must_differ_by, tolerance_for
from zspa_selfcheck.families import FAMILIES, QWEN_FAMILIES, visual_tokens

CHECKS = ("stock", "placeholders", "selection", "transformers", "schedules", "cuda-graphs")
QUESTION = "What is shown in this picture?"
OTHER_QUESTION = "How many red circles are there in the top left corner?"
KEEP_RATE = 0.25
# the schedules check's: a pruned prompt of the larger image spans a KV block even where
# vLLM picks 256-token blocks (the hybrid Qwen3.5 families)
SCHEDULES_KEEP_RATE = 0.5
CHUNK = 32  # tokens per step of the chunked engine: every image is cut
# two sizes per family, with different token counts where the count depends on the size
SIZES = {family: ((336, 336), (1024, 768)) for family in FAMILIES} | {"llava-next": ((500, 300), (1024, 768))}
TALL = (300, 900)  # M-RoPE: a grid taller than wide, where max(h, w) is not the width
# a real difference (other pixels, rows, positions) moves some logprob by more than this
DIFF_MIN = 1e-3


@dataclass
class Result:
    family: str
    check: str
    status: str  # "PASS", "FAIL" or "SKIP"
    measured: str  # what was measured, with its figures
    tolerance: str = ""  # what it had to satisfy
    figures: dict = field(default_factory=dict)  # the numbers, for --json
    seconds: float = 0.0

    def line(self) -> str:
        tail = f"  [{self.tolerance}]" if self.tolerance else ""
        return f"{self.status:4}  {self.family:16} {self.check:13} {self.measured}{tail}"

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(self).items()}


class CheckFailed(Exception):
    """A check's measurement fell outside its tolerance: the message says by how much."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass(frozen=True)
class Settings:
    device: str  # "cuda" or "cpu": vLLM's platform
    dtype: str | None  # None: each family's default (float32; bfloat16 where vLLM needs it)
    quick: bool  # one image size and one keep_rate per check, no two-image requests
    checks: tuple[str, ...] = CHECKS


class FamilyRun:
    """One family's engines and checks. ``run()`` yields a Result per check, in order."""

    def __init__(self, family: str, fixture: Path, settings: Settings):
        self.family, self.fixture, self.settings = family, fixture, settings
        own = dict(FAMILIES[family].engine)
        needed = own.pop("dtype", None)  # vLLM's CPU kernels for the hybrid families take bfloat16 only
        dtype = needed if settings.device == "cpu" and needed else settings.dtype or needed or "float32"
        self.dtype = dtype
        self.tol: Tolerance = tolerance_for(dtype)
        self.engine_kwargs = dict(
            dtype=dtype,
            max_model_len=8192,
            distributed_executor_backend="uni",
            enforce_eager=True,  # the CUDA-graph check compares vLLM's default with this
            limit_mm_per_prompt={"image": 2, "video": 0},
            max_logprobs=-1,  # full-vocabulary logprobs (the vocabularies are ~900 tokens)
            seed=0,
            enable_prefix_caching=True,
            **own,
        )
        if settings.device == "cuda":
            self.engine_kwargs["gpu_memory_utilization"] = 0.3  # a tiny model: leave the GPU to others
        self.sizes = SIZES[family][:1] if settings.quick else SIZES[family]
        self.llm = None
        self.runner = None
        self._seed = 100

    # ------------------------------------------------------------------ plumbing
    def fresh(self, size) -> tuple[int, int, int]:
        """An image never sent before (an identical one is served from vLLM's caches)."""
        self._seed += 1
        return (*size, self._seed)

    def ask(self, llm, images, question=QUESTION, max_tokens=3, **knobs):
        from zspa_vllm.worker import selection_log

        selection_log.clear()
        return engine.chat(llm, {"images": list(images), "question": question, "max_tokens": max_tokens, "knobs": knobs})

    def selections(self):
        from zspa_vllm.worker import selection_log

        return list(selection_log.RECENT)

    def start(self, **overrides):
        kwargs = {**self.engine_kwargs, **overrides}
        llm, seconds = engine.open_engine(str(self.fixture), **kwargs)
        cls = engine.model_class_of(llm)
        if not cls.__module__.startswith("zspa_vllm."):
            engine.shutdown(llm)
            raise CheckFailed(f"the engine runs vLLM's own {cls.__name__}: the zspa plugin did not load (is VLLM_PLUGINS set without zspa?)")
        return llm, seconds

    def image_token(self) -> int:
        return self.llm.get_tokenizer().convert_tokens_to_ids(FAMILIES[self.family].image_token)

    def visual(self, image) -> int:
        return visual_tokens(self.family, image[0], image[1], self.fixture)

    # ------------------------------------------------------------------ the run
    def run(self) -> Iterator[Result]:
        stock_requests = self._stock_requests()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            stock = None
            if "stock" in self.settings.checks:  # stock vLLM answers in a child process while ours starts
                kwargs = dict(self.engine_kwargs)
                stock = pool.submit(engine.child_outputs, str(self.fixture), kwargs, stock_requests, plugin=False)
            try:
                self.llm, seconds = self.start()
                self.runner = engine.runner_of(self.llm)
            except Exception as error:  # noqa: BLE001  (reported as every check's failure)
                for check in self.settings.checks:
                    yield Result(self.family, check, "FAIL", f"the engine did not start: {_brief(error)}")
                if stock is not None:
                    stock.cancel()
                return
            # each returns (status, what was measured, its bound, the figures) or raises CheckFailed
            checks: dict[str, Callable[[], tuple[str, str, str, dict]]] = {
                "stock": lambda: self.check_stock(stock_requests, stock.result()),
                "placeholders": self.check_placeholders,
                "selection": self.check_selection,
                "transformers": self.check_transformers,
                "schedules": self.check_schedules,  # starts another engine: keep it last but one
                "cuda-graphs": self.check_cuda_graphs,
            }
            try:
                for name in self.settings.checks:
                    yield self._timed(name, checks[name])
            finally:
                if self.llm is not None:
                    engine.shutdown(self.llm)
                    self.llm = None

    def _timed(self, name: str, check) -> Result:
        t0 = time.perf_counter()
        try:
            outcome = check()
        except CheckFailed as failure:
            result = Result(self.family, name, "FAIL", str(failure))
        except Exception as error:  # noqa: BLE001  (a check that crashes fails, and says where)
            where = traceback.extract_tb(error.__traceback__)[-1]
            result = Result(self.family, name, "FAIL", f"raised {_brief(error)} ({Path(where.filename).name}:{where.lineno})")
        else:
            status, measured, tolerance, figures = outcome
            result = Result(self.family, name, status, measured, tolerance, figures)
        result.seconds = round(time.perf_counter() - t0, 2)
        return result

    # ------------------------------------------------------------------ stock
    def _stock_requests(self) -> list[dict]:
        small = self.sizes[0]
        requests = [{"images": [(*small, 1)], "question": QUESTION}]
        if not self.settings.quick:
            requests.append({"images": [(*small, 2), (*SIZES[self.family][1], 3)], "question": QUESTION})
        requests.append({"images": [(*small, 4)], "question": QUESTION})  # sensitivity: other pixels
        return requests

    def check_stock(self, requests, stock):
        from zspa_vllm.worker import selection_log

        worst, rows = 0.0, []
        for knobs in ({}, {"keep_rate": 1.0}):
            for request, ref in zip(requests[:-1], stock[:-1]):
                out = self.ask(self.llm, request["images"], request["question"], **knobs)
                require(not selection_log.RECENT, f"{knobs or 'no knobs'}: the selection ran although nothing is pruned")
                require(list(out.prompt_token_ids) == ref["prompt_token_ids"], f"{knobs or 'no knobs'}: other prompt token ids than stock vLLM")
                compared = compare_answers(out, ref, self.tol.schedule, self.tol.steps)
                require(compared.problem is None, f"{knobs or 'no knobs'}, {len(request['images'])} image(s): {compared.problem}")
                worst = max(worst, compared.worst)
                rows.append(len(request["images"]))
        # sensitive: the same prompt with other pixels lands far from stock's answer
        out = self.ask(self.llm, requests[0]["images"], keep_rate=1.0)
        other = logprobs_max_diff(out, stock[-1], self.tol.steps)
        bound = must_differ_by(self.tol)
        require(other > bound, f"stock vLLM on another image differs by only {other:.1e} <= {bound:.0e}: the comparison cannot see the image")
        return (
            "PASS",
            f"max |dlogprob| {worst:.1e} over {len(rows)} requests (another image: {other:.1e})",
            f"<= {self.tol.schedule:.0e}, another image > {bound:.0e}",
            {"max_dlogprob": worst, "other_image": other},
        )

    # ------------------------------------------------------------------ placeholders
    def check_placeholders(self):
        token = self.image_token()
        rates = (KEEP_RATE,) if self.settings.quick else (0.1, KEEP_RATE, 0.5)
        from zspa_vllm.core.selection import num_kept

        cases = []
        for size in self.sizes:
            image = self.fresh(size)
            full = self.ask(self.llm, [image], max_tokens=1)
            n = self.visual(image)
            count = list(full.prompt_token_ids).count(token)
            require(count == n, f"{size[0]}x{size[1]}: {count} placeholder tokens unpruned, the model's formula says {n}")
            text = [t for t in full.prompt_token_ids if t != token]
            for rate in rates:
                out = self.ask(self.llm, [image], max_tokens=1, keep_rate=rate)
                l = num_kept(n, rate)
                shrink = len(full.prompt_token_ids) - len(out.prompt_token_ids)
                require(shrink == n - l, f"{size[0]}x{size[1]} keep_rate {rate}: the prompt shrank by {shrink}, not n - l = {n} - {l}")
                require(list(out.prompt_token_ids).count(token) == l, f"{size[0]}x{size[1]} keep_rate {rate}: not {l} placeholder tokens")
                require([t for t in out.prompt_token_ids if t != token] == text, "the text around the image changed")
                got = [(s.num_visual, len(s.kept)) for s in self.selections()]
                require(got == [(n, l)], f"{size[0]}x{size[1]} keep_rate {rate}: the selection kept {got}, not [({n}, {l})]")
                cases.append(f"{n}->{l}")
        if not self.settings.quick:
            images = [self.fresh(size) for size in SIZES[self.family]]
            ns = [self.visual(image) for image in images]
            full = self.ask(self.llm, images, max_tokens=1)
            out = self.ask(self.llm, images, max_tokens=1, keep_rate=KEEP_RATE)
            ls = [num_kept(n, KEEP_RATE) for n in ns]
            shrink = len(full.prompt_token_ids) - len(out.prompt_token_ids)
            require(shrink == sum(ns) - sum(ls), f"two images: the prompt shrank by {shrink}, not {sum(ns) - sum(ls)}")
            require([(s.num_visual, len(s.kept)) for s in self.selections()] == list(zip(ns, ls)), "two images: not one budget per image")
            cases.append(f"{'+'.join(map(str, ns))}->{'+'.join(map(str, ls))}")
        return "PASS", f"n -> l: {', '.join(cases)}", "shrink == n - l exactly", {"cases": cases}

    # ------------------------------------------------------------------ selection
    def check_selection(self):
        tokenizer = self.llm.get_tokenizer()
        query = tokenizer.encode(QUESTION, add_special_tokens=False)
        cases = [({"keep_rate": KEEP_RATE}, 0.2, "zspa")]
        if not self.settings.quick:
            cases += [({"keep_rate": 0.1, "core_ratio": 0.5}, 0.5, "zspa"), ({"keep_rate": 0.1, "prune_method": "divprune"}, 0.0, "divprune")]
        checked = []
        for knobs, core_ratio, method in cases:
            image = self.fresh(self.sizes[-1])
            self.ask(self.llm, [image], max_tokens=1, **knobs)
            (selection,) = self.selections()
            require(list(selection.query_ids) == query, f"the query was {list(selection.query_ids)}, not the question's tokens {query}")
            n, expected = reference.expected_selection(
                self.llm, self.family, self.fixture, image, query, len(selection.kept), core_ratio, method
            )
            require(n == selection.num_visual, f"the model's own encoder gives {n} rows, the selection saw {selection.num_visual}")
            require(list(selection.kept) == expected, f"{knobs}: kept {_head(selection.kept)}, select_tokens picks {_head(expected)}")
            if method != "divprune":  # sensitive: without the question the selection differs
                _, blind = reference.expected_selection(self.llm, self.family, self.fixture, image, [], len(selection.kept), core_ratio, method)
                require(blind != expected, "the selection without the question is the same: the check cannot see the query")
            checked.append(f"{len(selection.kept)} of {n} ({method})")
        return "PASS", f"kept == select_tokens: {', '.join(checked)}", "identical indices", {"cases": checked}

    # ------------------------------------------------------------------ transformers
    def check_transformers(self):
        hf = reference.hf_model(self.fixture)
        if self.family in QWEN_FAMILIES:
            return self._transformers_mrope(hf)
        sizes = SIZES[self.family] if not self.settings.quick else self.sizes
        images = [self.fresh(size) for size in sizes]
        out = self.ask(self.llm, images, max_tokens=1, keep_rate=KEEP_RATE)
        kept = [s.kept for s in self.selections()]
        # vLLM builds Gemma 3's bidirectional image block on GPUs; its CPU attention has
        # none (stock vLLM included): compare with the mask the engine uses
        bidirectional = self.family in reference.BIDIRECTIONAL and self.settings.device != "cpu"
        diffs = reference.one_run_diffs(hf, self.family, out, images, kept, self.image_token(), bidirectional)
        wrong = max(DIFF_MIN, 3 * self.tol.hf)
        require(diffs["kept"] <= self.tol.hf, f"max |dlogprob| {diffs['kept']:.1e} > {self.tol.hf:.0e} against transformers on the kept rows")
        require(diffs["first rows"] > wrong, f"the first l rows instead of the kept ones differ by only {diffs['first rows']:.1e}: the check cannot see the rows")
        measured = f"max |dlogprob| {diffs['kept']:.1e} (first l rows instead: {diffs['first rows']:.1e}"
        if "other mask" in diffs:
            mask = "both ways" if bidirectional else "causal"
            require(diffs["other mask"] > wrong, f"the image block's mask does not matter ({diffs['other mask']:.1e}): the check cannot see it")
            measured += f"; image block {mask}, the other mask: {diffs['other mask']:.1e}"
        return "PASS", measured + ")", f"<= {self.tol.hf:.0e}, wrong inputs > {wrong:.0e}", diffs

    def _transformers_mrope(self, hf):
        sizes = [TALL] if self.settings.quick else [TALL, (336, 336)]
        images = [self.fresh(size) for size in sizes]
        out = self.ask(self.llm, images, keep_rate=KEEP_RATE)
        kept = [s.kept for s in self.selections()]
        diffs, grids, _ = reference.mrope_diffs(hf, out, images, kept)
        wrong = max(DIFF_MIN, 3 * self.tol.hf)
        require(diffs["unpruned"] <= self.tol.hf, f"max |dlogprob| {diffs['unpruned']:.1e} > {self.tol.hf:.0e} against transformers at the unpruned positions")
        require(diffs["consecutive"] > wrong, f"consecutive positions differ by only {diffs['consecutive']:.1e}: the check cannot see positions")
        require(diffs["width"] > wrong, f"text continuing from the width differs by only {diffs['width']:.1e}: the check cannot see it")
        measured = f"max |dlogprob| {diffs['unpruned']:.1e} at unpruned positions (consecutive: {diffs['consecutive']:.1e}, text from the width: {diffs['width']:.1e}"
        if "no-deepstack" in diffs:
            require(diffs["no-deepstack"] > DIFF_MIN, f"zeroed deepstack levels differ by only {diffs['no-deepstack']:.1e}")
            measured += f", deepstack zeroed: {diffs['no-deepstack']:.1e}"
        return "PASS", measured + ")", f"<= {self.tol.hf:.0e}, wrong positions > {wrong:.0e}", diffs

    # ------------------------------------------------------------------ schedules
    def check_schedules(self):
        image = self.fresh(SIZES[self.family][-1])  # the larger: its pruned prompt spans KV blocks
        answers, kept = {}, {}
        for question in (QUESTION, OTHER_QUESTION):
            answers[question] = self.ask(self.llm, [image], question, keep_rate=SCHEDULES_KEEP_RATE)
            kept[question] = [s.kept for s in self.selections()]
        require(kept[QUESTION] != kept[OTHER_QUESTION], "two questions kept the same tokens: the selection does not see the question")
        between = logprobs_max_diff(answers[QUESTION], answers[OTHER_QUESTION])
        bound = must_differ_by(self.tol)
        require(between > bound, f"two questions answer alike ({between:.1e}): the comparison cannot see the question")
        again = self.ask(self.llm, [image], QUESTION, keep_rate=SCHEDULES_KEEP_RATE)
        hit = again.num_cached_tokens or 0
        block = self.llm.llm_engine.vllm_config.cache_config.block_size
        require(hit > 0 or len(again.prompt_token_ids) <= block, f"a repeat of a {len(again.prompt_token_ids)}-token prompt hit no cached block of {block}")
        compared = compare_answers(again, answers[QUESTION], self.tol.schedule, self.tol.steps)
        require(compared.problem is None, f"the repeat served from the prefix cache: {compared.problem}")
        worst = compared.worst
        engine.shutdown(self.llm)
        self.llm = None
        self.llm, _ = self.start(enable_prefix_caching=False, enable_chunked_prefill=True, max_num_batched_tokens=CHUNK)
        for question in (OTHER_QUESTION, QUESTION):  # the other order
            out = self.ask(self.llm, [image], question, keep_rate=SCHEDULES_KEEP_RATE)
            require(len(out.prompt_token_ids) > 2 * CHUNK, "the prompt was not chunked")
            require([s.kept for s in self.selections()] == kept[question], "chunked: other kept tokens")
            require(list(out.prompt_token_ids) == list(answers[question].prompt_token_ids), "chunked: other prompt token ids")
            compared = compare_answers(out, answers[question], self.tol.hf, self.tol.steps)
            require(compared.problem is None, f"chunked ({CHUNK} tokens a step), prefix caching off: {compared.problem}")
            worst = max(worst, compared.worst)
        return (
            "PASS",
            f"max |dlogprob| {worst:.1e} (a repeat hit {hit} of {len(again.prompt_token_ids)} tokens, blocks of {block}; the two questions: {between:.1e})",
            f"<= {self.tol.hf:.0e}, the other question > {bound:.0e}",
            {"max_dlogprob": worst, "prefix_hit_tokens": hit, "other_question": between},
        )

    # ------------------------------------------------------------------ CUDA graphs
    def check_cuda_graphs(self):
        if self.settings.device != "cuda":
            return "SKIP", f"vLLM runs on {self.settings.device}: no CUDA graphs", "", {}
        image = self.fresh(self.sizes[-1])
        eager = [self.ask(self.llm, [image], q, keep_rate=KEEP_RATE) for q in (QUESTION, OTHER_QUESTION)]
        engine.shutdown(self.llm)
        self.llm = None
        self.llm, _ = self.start(enforce_eager=False)  # vLLM's default: CUDA graphs on
        worst = 0.0
        for question, ref in zip((QUESTION, OTHER_QUESTION), eager):
            out = self.ask(self.llm, [image], question, keep_rate=KEEP_RATE)
            compared = compare_answers(out, ref, self.tol.hf, self.tol.steps)
            require(compared.problem is None, f"CUDA graphs vs eager: {compared.problem}")
            worst = max(worst, compared.worst)
        return "PASS", f"max |dlogprob| {worst:.1e} with CUDA graphs vs eager", f"<= {self.tol.hf:.0e}", {"max_dlogprob": worst}


def _brief(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"[:300]


def _head(indices, n: int = 8) -> str:
    values = list(indices)
    return str(values[:n])[:-1] + (", ...]" if len(values) > n else "]")
