"""Time zspa_vllm.prune.select_tokens at the sizes of real models.

    python benchmarks/select_bench.py [--repeats 7] [--device cpu|cuda|all] [--dtype bfloat16]

(n, d, l) rows: LLaVA-1.5 (576 tokens, 4096 wide, 10% kept), LLaVA-NeXT (2880, 4096),
Qwen2.5-VL-7B at 1296 tokens (a 1008x1008 image) and at 16384 tokens (its largest image).
Prints a markdown table with the median and the spread (min-max) of repeated runs.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from zspa_vllm.prune import select_tokens

SHAPES = [  # (label, n, d, l)
    ("LLaVA-1.5", 576, 4096, 58),
    ("LLaVA-NeXT", 2880, 4096, 288),
    ("Qwen2.5-VL 1008px", 1296, 3584, 130),
    ("Qwen2.5-VL max", 16384, 3584, 1638),
]
QUERY_TOKENS = 32


def time_once(visual, query, num_keep, core_ratio, method) -> float:
    if visual.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    select_tokens(visual, query, num_keep, core_ratio, method=method)
    if visual.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(device: str, dtype: torch.dtype, repeats: int, methods: list[str], core_ratio: float):
    rows = []
    gen = torch.Generator().manual_seed(0)
    for label, n, d, l in SHAPES:
        visual = torch.randn(n, d, generator=gen).to(device=device, dtype=dtype)
        query = torch.randn(QUERY_TOKENS, d, generator=gen).to(device=device, dtype=dtype)
        for method in methods:
            time_once(visual, query, l, core_ratio, method)  # warm-up
            times = [time_once(visual, query, l, core_ratio, method) for _ in range(repeats)]
            rows.append((label, n, d, l, method, times))
            ms = [t * 1e3 for t in times]
            print(
                f"| {device} | {label} | {n} | {d} | {l} | {method} | "
                f"{statistics.median(ms):.2f} | {min(ms):.2f}-{max(ms):.2f} |",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--dtype", default="bfloat16", help="dtype of the visual tokens (similarities are float32)")
    parser.add_argument("--methods", default="zspa", help="comma-separated: zspa,relevance,divprune")
    parser.add_argument("--core-ratio", type=float, default=0.2)
    args = parser.parse_args()

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            raise SystemExit("--device cuda: no CUDA device is available")
        devices.remove("cuda")
    dtype = getattr(torch, args.dtype)

    print(f"# select_tokens timings: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, dtype {args.dtype}, core_ratio {args.core_ratio}, "
          f"{args.repeats} repeats")
    if torch.cuda.is_available():
        print(f"# cuda: {torch.cuda.get_device_name()}")
    print("| device | shape | n | d | l | method | median ms | min-max ms |")
    print("|---|---|---|---|---|---|---|---|")
    for device in devices:
        bench(device, dtype, args.repeats, args.methods.split(","), args.core_ratio)


if __name__ == "__main__":
    main()
