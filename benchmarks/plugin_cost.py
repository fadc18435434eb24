"""What the plugin itself costs a request it does not prune, timed where the time is spent.

Starts stock vLLM (plugin off), ``vllm serve`` with the plugin (its processor, scheduler
and model classes, without zspa-serve's HTTP layer) and zspa-serve on the same
proportional model, each behind a probe (``--probe``: this file runs the server after
wrapping functions of the API-server process), sends the same streamed image requests
(no knobs, keep_rate 1; keep_rate 0.1 for scale) at each concurrency, interleaved, and
reports per request:

- each of our API-server hooks' **own** time: the CPU time of the thread running it
  (``time.thread_time``: waiting for the GIL or the network is not counted) less the time
  inside the vLLM code it calls (``super()``, the downstream ``send``), so what stock
  would do anyway is not counted;
- vLLM's own front-end phases on both servers (decoding the image, the multimodal
  processor), for scale;
- our engine-side code, in the engine core and its worker (the scheduler's charge,
  ``embed_multimodal``'s own part, the selection, the M-RoPE hooks and the vLLM position
  pass they turn on), with vLLM's vision encoder and scheduler beside it on both servers:
  timed by ``server_probes/engine_times.py`` in every process of each server (wall time);
- TTFT and vLLM's prefill time, as serve_bench reports them.

    python benchmarks/plugin_cost.py --families llava-1.5,qwen2.5-vl --scale 0.125 --concurrency 1,8 --requests 24 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import inspect
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

# (module, qualified name, the vLLM call inside it whose time is not ours, or None)
OURS = [
    ("zspa_serve.middleware", "_read_body", "receive"),
    ("zspa_serve.middleware", "_parse", None),
    ("zspa_serve.middleware", "_check_media_urls", None),
    ("zspa_serve.middleware", "lift_knobs", None),
    ("zspa_serve.middleware", "_rewrite", None),
    ("zspa_serve.middleware", "_with_length", None),
    ("zspa_serve.middleware", "_Annotator.send", "inner:send"),
    ("zspa_vllm.frontend.request_counts", "open_tally", None),
    ("zspa_vllm.frontend.request_counts", "close", None),
    ("zspa_serve.metrics", "count", None),
    ("zspa_vllm.core.stats_files", "read_stats", None),  # at each /metrics scrape (the workload's: 5 a second)
    ("zspa_vllm.frontend.processor", "PruningProcessorMixin.apply", "vllm.multimodal.processing.processor:BaseMultiModalProcessor.apply"),
    ("zspa_vllm.frontend.processor", "PruningProcessorMixin._get_mm_hashes", "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_mm_hashes"),
    ("zspa_vllm.frontend.processor", "PruningProcessorMixin._apply_hf_processor_main", "vllm.multimodal.processing.processor:BaseMultiModalProcessor._apply_hf_processor_main"),
    ("zspa_vllm.frontend.processor", "PruningProcessorMixin._get_cache_missing_processor_kwargs", "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_cache_missing_processor_kwargs"),
]
# vLLM's own front-end phases, on both servers
VLLM_PHASES = [
    ("vllm.multimodal.media.connector", "MediaConnector._load_data_url", "decode the image"),
    ("vllm.multimodal.processing.processor", "BaseMultiModalProcessor.apply", "multimodal processor"),
]


# ------------------------------------------------------------------ the probe (server side)
class _Clock:
    """Per asyncio task (per thread outside one): a stack of open timed calls; each adds
    its time to its name and takes it off its caller's own time when the caller counts it
    as not ours. Per task, because the requests' coroutines interleave on one thread."""

    def __init__(self) -> None:
        self.own: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.stacks: dict[object, list] = {}

    @staticmethod
    def _key() -> object:
        try:
            return asyncio.current_task() or threading.get_ident()
        except RuntimeError:  # no event loop in this thread
            return threading.get_ident()

    def stack(self) -> list:
        return self.stacks.setdefault(self._key(), [])

    def drop_if_empty(self) -> None:  # a finished task's stack goes (and the task with it)
        key = self._key()
        if not self.stacks.get(key, True):
            del self.stacks[key]


CLOCK = _Clock()


def _resolve(module: str, qualname: str):
    owner = importlib.import_module(module)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def _timed(name: str, function, not_ours: bool, awaited: bool = False):
    """``function`` timing itself as ``name``; ``not_ours``: its time is taken off the
    caller's own time (a vLLM call inside one of our hooks). ``awaited``: time the await
    of what it returns (ASGI's send and receive may be callables that are not coroutine
    functions but return awaitables: timing the call alone would leave their work to the
    caller)."""

    def enter():
        CLOCK.stack().append([time.thread_time(), 0.0])

    def leave():
        stack = CLOCK.stack()
        start, inner = stack.pop()
        elapsed = time.thread_time() - start
        if stack and not_ours:
            stack[-1][1] += elapsed
        CLOCK.own[name] = CLOCK.own.get(name, 0.0) + elapsed - inner
        CLOCK.calls[name] = CLOCK.calls.get(name, 0) + 1
        CLOCK.drop_if_empty()

    if awaited or inspect.iscoroutinefunction(function):
        @functools.wraps(function)
        async def timed(*args, **kwargs):
            enter()
            try:
                return await function(*args, **kwargs)
            finally:
                leave()
    else:
        @functools.wraps(function)
        def timed(*args, **kwargs):
            enter()
            try:
                return function(*args, **kwargs)
            finally:
                leave()
    return timed


def install_probe(stock: bool, out: Path) -> None:
    for module, qualname, label in VLLM_PHASES:
        owner, name = _resolve(module, qualname)
        setattr(owner, name, _timed(label, getattr(owner, name), not_ours=True))
    if not stock:
        for module, qualname, inner in OURS:
            owner, name = _resolve(module, qualname)
            if inner and ":" in inner and not inner.startswith("inner:"):
                inner_owner, inner_name = _resolve(*inner.split(":"))
                if not getattr(getattr(inner_owner, inner_name), "__wrapped__", None):
                    setattr(inner_owner, inner_name, _timed(inner, getattr(inner_owner, inner_name), not_ours=True))
            setattr(owner, name, _timed(qualname, getattr(owner, name), not_ours=False))
        import zspa_serve.middleware as middleware

        annotator = middleware._Annotator
        init = annotator.__init__

        def __init__(self, send, tally_id):  # the downstream send() is not ours
            init(self, _timed("inner:send", send, not_ours=True, awaited=True), tally_id)

        annotator.__init__ = __init__
        body = middleware._read_body  # (timed above)

        async def _read_body(scope, receive, limit):  # waiting for the client's bytes is not ours
            return await body(scope, _timed("inner:receive", receive, not_ours=True, awaited=True), limit)

        middleware._read_body = _read_body

    def dump() -> None:  # twice a second, outside every timed call
        while True:
            time.sleep(0.5)
            temporary = out.with_suffix(".tmp")
            temporary.write_text(json.dumps({"own_s": dict(CLOCK.own), "calls": dict(CLOCK.calls)}))
            os.replace(temporary, out)

    threading.Thread(target=dump, daemon=True).start()


# ------------------------------------------------------------------ the driver
def _read_probe(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"own_s": {}, "calls": {}}


PLUGIN_ROW = "vllm serve + plugin, no knobs"
def engine_probe_env(directory: Path) -> dict:
    """Environment of a server whose engine-side code is timed into ``directory`` (see
    server_probes/engine_times.py)."""
    from chat_workloads import probe_env

    return probe_env("ZSPA_BENCH_ENGINE_PROBE", directory)


def _read_engine_probe(directory: Path) -> dict[str, float]:
    """Every process's engine-side totals, seconds by row name ("engine: ..." for ours,
    "vLLM engine: ..." for vLLM's own)."""
    own: dict[str, float] = {}
    for path in sorted(directory.glob("*.json")):
        totals = json.loads(path.read_text())
        for label, seconds in totals["own_s"].items():
            name = ("vLLM engine: " if totals["whose"][label] == "vllm" else "engine: ") + label
            own[name] = own.get(name, 0.0) + seconds
    return own


def bench_family(family: str, args, workdir: Path) -> list[dict]:
    import serve_bench as sb
    from zspa_serve.launch import ServerProcess

    model = str(sb.build_model(family, args, workdir / family))
    engine = ["--dtype", "float32", "--max-model-len", "8192", "--max-num-seqs", "8", "--enforce-eager"]
    env = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
           "VLLM_USE_V2_MODEL_RUNNER": "1" if args.runner == "v2" else "0"}
    servers, probes, engine_probes = {}, {}, {}
    try:
        # stock: plugins off; plugin: `vllm serve` with the plugin's processor, scheduler and
        # model classes but not zspa-serve's HTTP layer; zspa: zspa-serve
        for kind in ("stock", "plugin", "zspa"):
            probes[kind] = workdir / f"{family}-{kind}-probe.json"
            engine_probes[kind] = workdir / f"{family}-{kind}-engine"
            program = [sys.executable, str(Path(__file__).resolve()), "--probe", kind, str(probes[kind])]
            server_env = {**env, **engine_probe_env(engine_probes[kind]), **({"VLLM_PLUGINS": ""} if kind == "stock" else {})}
            servers[kind] = ServerProcess([model, "--served-model-name", "m", *engine], workdir / f"{family}-{kind}.log",
                                          env=server_env, program=program)
        for server in servers.values():  # started together: their start-ups overlap
            server.wait_healthy(1200)
        rows = [("stock vLLM", "stock", {}), (PLUGIN_ROW, "plugin", {}), ("zspa, no knobs", "zspa", {}), ("zspa keep_rate=1", "zspa", {"keep_rate": 1, "core_ratio": 0.2}),
                ("zspa keep_rate=0.1", "zspa", {"keep_rate": 0.1, "core_ratio": 0.2})]  # what pruning adds, for scale
        seed = 50_000
        results = {(c, label): [] for c in args.concurrency for label, *_ in rows}
        for c, repeat in [(c, r) for c in args.concurrency for r in range(args.warmup + args.repeats)]:
            for label, kind, knobs in rows:  # interleaved, so drift hits every row alike
                parts = [sb.image_part(s, sb.IMAGE_SIZE) for s in range(seed, seed + args.requests)]
                seed += args.requests
                time.sleep(1.2)  # the probe writes its clock twice a second
                before = {**_read_probe(probes[kind])["own_s"], **_read_engine_probe(engine_probes[kind])}
                run = asyncio.run(sb._workload(servers[kind].base_url, "m", parts, sb.QUESTION, knobs, c, args.max_tokens))
                time.sleep(1.2)
                after = {**_read_probe(probes[kind])["own_s"], **_read_engine_probe(engine_probes[kind])}
                own = {name: 1000 * (after[name] - before.get(name, 0)) / args.requests for name in after}
                if repeat >= args.warmup:
                    results[c, label].append({"ttft_ms": run["ttft_p50_ms"], "prefill_ms": run["prefill_ms"],
                                              "front_ms": run["front_ms"], "requests_per_s": run["requests_per_s"],
                                              "prompt_tokens": run["prompt_tokens"], "own_ms": own})
                    print(f"[{family}] c={c} repeat {repeat - args.warmup + 1} {label}: TTFT p50 {run['ttft_p50_ms']:.1f} ms, "
                          f"ours {sum(v for k, v in own.items() if not _is_vllm(k)):.2f} ms", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return [{"family": family, "concurrency": c, "label": label, "runs": runs} for (c, label), runs in results.items()]


def _is_vllm(name: str) -> bool:
    return name in {label for *_, label in VLLM_PHASES} or name.startswith(("inner:", "vllm.", "vLLM engine: "))


def _title(name: str) -> str:
    if name.startswith(("engine: ", "vLLM engine: ")):
        return name
    return ("vLLM: " if _is_vllm(name) else "ours: ") + name


def markdown(rows: list[dict], meta: dict) -> str:
    def stat(values):
        values = sorted(values)
        return f"{statistics.median(values):.2f} ({values[0]:.2f}-{values[-1]:.2f})"

    lines = [f"# What the plugin costs a request it does not prune ({meta['machine']})", "",
             f"`{meta['command']}`", "",
             "Per request, median (min-max) over the repeats; each repeat is the mean of "
             f"{meta['requests']} streamed requests, vLLM's model runner {meta.get('runner', 'v1')}. Own time "
             "in the API server: the hook's thread CPU time less the vLLM code it calls; in the engine core "
             "and worker (`engine:` rows): wall time less the timed calls inside.", ""]
    for family, c in dict.fromkeys((r["family"], r["concurrency"]) for r in rows):
        mine = [r for r in rows if (r["family"], r["concurrency"]) == (family, c)]
        stock = next(r for r in mine if r["label"] == "stock vLLM")
        names = sorted({n for r in mine for run in r["runs"] for n in run["own_ms"]},
                       key=lambda n: (_is_vllm(n), n.startswith(("engine: ", "vLLM engine: ")), n))
        lines += [f"## {family}, concurrency {c}", "", "| | " + " | ".join(r["label"] for r in mine) + " |", "|---" * (len(mine) + 1) + "|"]

        def row(title, get):
            cells = []
            for r in mine:
                values = [get(run) for run in r["runs"]]
                cells.append("-" if any(v is None for v in values) else stat(values))
            lines.append(f"| {title} | " + " | ".join(cells) + " |")

        row("prompt tokens", lambda run: run["prompt_tokens"])
        row("TTFT p50 ms", lambda run: run["ttft_ms"])
        ratios = [stat([run["ttft_ms"] / base["ttft_ms"] for run, base in zip(r["runs"], stock["runs"])]) for r in mine]
        lines.append("| TTFT vs stock (same repeat) | " + " | ".join(ratios) + " |")
        row("req/s", lambda run: run["requests_per_s"])
        ratios = [stat([run["requests_per_s"] / base["requests_per_s"] for run, base in zip(r["runs"], stock["runs"])]) for r in mine]
        lines.append("| req/s vs stock (same repeat) | " + " | ".join(ratios) + " |")
        row("vLLM prefill ms", lambda run: run["prefill_ms"])
        row("front end ms (TTFT less queue and prefill)", lambda run: run["front_ms"])
        for name in names:
            if name.startswith(("inner:", "vllm.")):
                continue
            row(_title(name), lambda run, n=name: run["own_ms"].get(n, 0.0))
        row("**ours, API server**", lambda run: sum(v for k, v in run["own_ms"].items() if not _is_vllm(k) and not k.startswith("engine: ")))
        row("**ours, engine core and worker**", lambda run: sum(v for k, v in run["own_ms"].items() if k.startswith("engine: ")))
        row("**ours, all hooks**", lambda run: sum(v for k, v in run["own_ms"].items() if not _is_vllm(k)))
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":  # the server process
        kind, out, rest = sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
        install_probe(kind == "stock", out)
        if kind in ("stock", "plugin"):
            from zspa_serve.cli import run_vllm_serve

            run_vllm_serve(["serve", *rest])
        else:
            from zspa_serve.cli import main as serve

            serve(rest)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default="llava-1.5,qwen2.5-vl")
    p.add_argument("--scale", type=float, default=0.125)
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--concurrency", type=lambda t: [int(c) for c in t.split(",")], default=[1, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--runner", choices=["v1", "v2"], default="v2",
                   help="vLLM's model runner on both servers: v2 (Model Runner V2, vLLM's default on GPUs) or v1")
    p.add_argument("--name", default="plugin_cost_cpu")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for NAME.md and NAME.json")
    args = p.parse_args()
    args.hidden, args.layers = 512, 8
    rows = []
    with tempfile.TemporaryDirectory(prefix="zspa-plugin-cost-") as tmp:
        for family in args.families.split(","):
            rows += bench_family(family, args, Path(tmp))
    import platform

    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "requests": args.requests, "runner": args.runner,
            "command": "python benchmarks/plugin_cost.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / f"{args.name}.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
