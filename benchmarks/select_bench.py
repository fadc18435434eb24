"""Time zspa_vllm.core.selection.select_tokens at the sizes of real models, on the rows the
vision encoder produced for a real image, next to that encoder's time, on the same device.

    python benchmarks/select_bench.py [--repeats 7] [--device cpu|cuda|all] [--dtype bfloat16]
                                      [--encoder-repeats 3] [--no-encoder] [--against REV]

The selection's cost depends on its rows (the CPU loop's candidate set widens where rows
tie), so each shape is timed on three sets: "encoder", the encoder's output for a
zspa_selfcheck.images scene preprocessed as the model's own image processor does;
"duplicates", those rows with each one repeated 8 times in place (LLaVA-NeXT's padding
rows are identical; flat regions give near-identical ones); "identical", one row n times
(a blank image), where every comparison ties.

(n, d, l) rows: LLaVA-1.5 (576 tokens, 4096 wide, 10% kept), the same at 512 wide (the
LLM width of the CPU serving benchmarks' 0.125-scale model), LLaVA-NeXT (2880, 4096: five
336px tiles), Qwen2.5-VL-7B at 1296 tokens (a 1008x1008 image) and at 16384 tokens (its
largest image). The encoders are the real architectures at their real sizes with random
weights (transformers' CLIP ViT-L/14-336 without its last layer + LLaVA's two-layer
projector; Qwen2.5-VL-7B's 32-block vision tower with its merger). The largest Qwen image
is timed on 2 of the tower's 32 blocks (one windowed, one full-attention) and the others
counted at those blocks' times (28 windowed, 4 full): the whole tower takes most of an
hour on a 2-core CPU (its rows then come from those 2 blocks). Prints a markdown table:
medians with the spread (min-max), and the selection's share of the encoder's time.
``--against REV`` also times zspa_vllm/core/selection.py as it was at git revision REV, on
the same rows, alternating with this checkout's selection, and adds its time and the
ratio (this / REV, the median and range of the repeats' own ratios).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from zspa_selfcheck.images import make_image
from zspa_vllm.core import selection as this_selection

REPO = Path(__file__).resolve().parents[1]

QUERY_TOKENS = 32
# Qwen2.5-VL-7B's vision tower: 32 blocks, full attention in these, windows elsewhere.
QWEN_DEPTH, QWEN_FULL_BLOCKS = 32, (7, 15, 23, 31)


@dataclass(frozen=True)
class Shape:
    label: str
    n: int  # visual tokens after projection
    d: int  # their width (the LLM's)
    l: int  # kept at 10%
    encoder: str  # "llava" or "qwen2.5-vl"
    tiles: int = 1  # LLaVA: 336px tiles
    grid: int = 0  # Qwen: patches per side (14px each)
    sampled: bool = False  # Qwen: time 2 blocks, count the rest at their times


SHAPES = [
    Shape("LLaVA-1.5", 576, 4096, 58, "llava", tiles=1),
    # the LLM width of the CPU serving benchmarks' model (benchmarks/proportional.py, --scale 0.125)
    Shape("LLaVA-1.5 x0.125", 576, 512, 58, "llava", tiles=1),
    Shape("LLaVA-NeXT", 2880, 4096, 288, "llava", tiles=5),
    Shape("Qwen2.5-VL 1008px", 1296, 3584, 130, "qwen2.5-vl", grid=72),
    Shape("Qwen2.5-VL max", 16384, 3584, 1638, "qwen2.5-vl", grid=256, sampled=True),
]


def _elapsed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


# ---------------------------------------------------------------- encoders


class _LlavaEncoder(torch.nn.Module):
    """CLIP ViT-L/14-336 up to its second-to-last layer (LLaVA's feature layer) + projector."""

    def __init__(self, width_out: int):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        config = CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
            image_size=336, patch_size=14, attn_implementation="sdpa",
        )
        self.tower = CLIPVisionModel(config)
        self.projector = torch.nn.Sequential(
            torch.nn.Linear(1024, width_out), torch.nn.GELU(), torch.nn.Linear(width_out, width_out)
        )

    def forward(self, pixels):
        features = self.tower(pixels).last_hidden_state[:, 1:]  # drop the CLS token
        return self.projector(features).flatten(0, 1)


def _qwen_encoder(depth: int, full_blocks, width_out: int):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VisionTransformerPretrainedModel,
        Qwen2_5_VLVisionConfig,
    )

    config = Qwen2_5_VLVisionConfig(
        depth=depth, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=width_out,
        window_size=112, fullatt_block_indexes=list(full_blocks), patch_size=14, spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config._attn_implementation = "sdpa"
    return Qwen2_5_VisionTransformerPretrainedModel(config)


def encoder_inputs(shape: Shape) -> tuple:
    """The encoder's inputs for a scene image, preprocessed as the model's processor does:
    LLaVA, CLIP's 336px tiles of one image; Qwen2.5-VL, its flat patches and grid."""
    from transformers import CLIPImageProcessor, Qwen2VLImageProcessor

    if shape.encoder == "llava":
        scene = make_image(336 * shape.tiles, 336, seed=0)
        tiles = [scene.crop((336 * i, 0, 336 * (i + 1), 336)) for i in range(shape.tiles)]
        processor = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
        return (processor(images=tiles, return_tensors="pt")["pixel_values"],)
    side = shape.grid * 14
    processor = Qwen2VLImageProcessor(min_pixels=side * side, max_pixels=side * side)
    out = processor(images=[make_image(side, side, seed=0)], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, shape.grid, shape.grid]], out["image_grid_thw"]
    return out["pixel_values"], out["image_grid_thw"]


def time_encoder(shape: Shape, device: str, dtype: torch.dtype, repeats: int) -> tuple[list[float], torch.Tensor]:
    """Seconds per run of the shape's vision encoder, one per repeat (after a warm-up;
    none with ``repeats`` 0), and its output rows."""
    torch.manual_seed(0)
    if shape.encoder == "llava":
        model = _LlavaEncoder(shape.d)
    else:
        depth, full = (2, (1,)) if shape.sampled else (QWEN_DEPTH, QWEN_FULL_BLOCKS)
        model = _qwen_encoder(depth, full, shape.d)
    inputs = encoder_inputs(shape)
    model = model.to(device=device, dtype=dtype).eval()
    inputs = tuple(x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype) for x in inputs)

    block_times: list[float] = []
    if shape.sampled:  # each block's time, recorded around its forward
        starts: list[float] = []
        for block in model.blocks:
            block.register_forward_pre_hook(lambda *_: starts.append(_sync_now(device)))
            block.register_forward_hook(lambda *_: block_times.append(_sync_now(device) - starts.pop()))

    rows = []

    def run():
        out = model(*inputs)
        out = out.pooler_output if hasattr(out, "pooler_output") else out
        assert out.shape == (shape.n, shape.d)
        rows[:] = [out]

    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            block_times.clear()
            elapsed = _elapsed(run, device)
            if shape.sampled:  # blocks 0 (windowed) and 1 (full): count the other 30
                windowed, full = block_times
                elapsed += (QWEN_DEPTH - len(QWEN_FULL_BLOCKS) - 1) * windowed + (len(QWEN_FULL_BLOCKS) - 1) * full
            if i:  # the first run is a warm-up
                times.append(elapsed)
    return times, rows[0]


def _sync_now(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


# ---------------------------------------------------------------- selection


ROWS = ("encoder", "duplicates", "identical")
DUPLICATES = 8  # the worst case: each row repeated this many times in place


def selection_rows(encoded: torch.Tensor, kind: str) -> torch.Tensor:
    """The rows a selection is timed on: the encoder's own; each of its first n / 8 rows
    repeated 8 times in place; or its first row n times (a blank image: every row ties)."""
    if kind == "encoder":
        return encoded
    n = encoded.shape[0]
    if kind == "identical":
        return encoded[:1].expand(n, -1).contiguous()
    return encoded[: -(-n // DUPLICATES)].repeat_interleave(DUPLICATES, dim=0)[:n]


def selection_at(rev: str):
    """zspa_vllm/core/selection.py as it was at git revision ``rev``, loaded as its own
    module (it imports nothing from the package)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:zspa_vllm/core/selection.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "selection_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"selection_at_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_selection(shape: Shape, visual: torch.Tensor, device, dtype, repeats, method, core_ratio, modules) -> list[list[float]]:
    """Seconds per selection, a list per module of ``modules`` (selection modules timed in
    turn within each repeat, so that a slower stretch of the machine hits them alike)."""
    gen = torch.Generator().manual_seed(0)
    visual = visual.to(device=device, dtype=dtype)
    # the question's embeddings: random rows (the selection reads only their mean)
    query = torch.randn(QUERY_TOKENS, shape.d, generator=gen).to(device=device, dtype=dtype)
    runs = [
        lambda module=module: module.select_tokens(visual, query, shape.l, core_ratio, method=method, check_values=False)
        for module in modules
    ]
    kept = [run() for run in runs]  # warm-up
    if any(not torch.equal(kept[0], other) for other in kept[1:]):
        print(f"# {shape.label} {method}: the revisions keep different tokens", file=sys.stderr)
    times = [[] for _ in runs]
    for _ in range(repeats):
        for run, spent in zip(runs, times):
            spent.append(_elapsed(run, device))
    return times


def _fmt(seconds: list[float]) -> tuple[str, str]:
    ms = [s * 1e3 for s in seconds]
    return f"{statistics.median(ms):.1f}", f"{min(ms):.1f}-{max(ms):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed selections per row")
    parser.add_argument("--encoder-repeats", type=int, default=3, help="timed encoder runs per shape")
    parser.add_argument("--no-encoder", action="store_true", help="time the selection only (the encoder still runs once, for its rows)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--dtype", default="bfloat16", help="dtype of the visual tokens (similarities are float32)")
    parser.add_argument(
        "--encoder-dtype", default=None,
        help="the encoders' dtype (default: float32 on the CPU, which has no fast bfloat16 here; --dtype on CUDA)",
    )
    parser.add_argument("--methods", default="zspa", help="comma-separated: zspa,relevance,divprune")
    parser.add_argument("--core-ratio", type=float, default=0.2)
    parser.add_argument("--shapes", default=None, help="comma-separated labels (default: all)")
    parser.add_argument(
        "--sample-blocks", action="store_true",
        help="time every Qwen tower on 2 blocks (to check the sampling against a whole tower)",
    )
    parser.add_argument("--against", metavar="REV", default=None, help="also time the selection of git revision REV")
    args = parser.parse_args()

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            raise SystemExit("--device cuda: no CUDA device is available")
        devices.remove("cuda")
    dtype = getattr(torch, args.dtype)
    shapes = SHAPES
    if args.shapes:
        wanted = args.shapes.split(",")
        unknown = sorted(set(wanted) - {s.label for s in SHAPES})
        if unknown:
            raise SystemExit(f"--shapes: unknown {unknown}; known: {[s.label for s in SHAPES]}")
        shapes = [s for s in SHAPES if s.label in wanted]
    if args.sample_blocks:
        shapes = [dataclasses.replace(s, sampled=True) if s.encoder == "qwen2.5-vl" else s for s in shapes]
    methods = args.methods.split(",")

    print(f"# select_tokens timings: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, tokens {args.dtype}, core_ratio {args.core_ratio}, "
          f"{args.repeats} selections / {args.encoder_repeats} encoder runs per row, medians (min-max)")
    if torch.cuda.is_available():
        print(f"# cuda: {torch.cuda.get_device_name()}")
    modules = [this_selection] + ([selection_at(args.against)] if args.against else [])
    against = f" | {args.against} ms | min-max | this / {args.against} | min-max" if args.against else ""
    print(f"| device | shape | n | d | l | method | rows | selection ms | min-max{against} | encoder ms | min-max | selection / encoder |")
    print("|---" * (12 + 4 * bool(args.against)) + "|", flush=True)
    encoder_dtypes = set()
    jobs = [(device, shape) for device in devices for shape in shapes]
    for device, shape in tqdm(jobs, desc="shapes", unit="shape"):
        enc_dtype = getattr(torch, args.encoder_dtype) if args.encoder_dtype else (
            torch.float32 if device == "cpu" else dtype)
        encoder, encoded = time_encoder(shape, device, enc_dtype, 0 if args.no_encoder else args.encoder_repeats)
        encoder = None if args.no_encoder else encoder
        encoder_dtypes.add(str(enc_dtype).removeprefix("torch."))
        for method in methods:  # each row as soon as it is measured
            for kind in ROWS:
                rows = selection_rows(encoded, kind)
                times = time_selection(shape, rows, device, dtype, args.repeats, method, args.core_ratio, modules)
                tqdm.write(_row(device, shape, method, kind, times, encoder))
    if not args.no_encoder:
        print(f"# encoders in {', '.join(sorted(encoder_dtypes))}")


def _row(device, shape, method, kind, times, encoder) -> str:
    selection = times[0]
    sel_med, sel_spread = _fmt(selection)
    if len(times) > 1:  # the other revision's time, and the repeats' own ratios
        ratios = [this / other for this, other in zip(selection, times[1])]
        sel_spread += " | {} | {} | {:.2f}x | {:.2f}-{:.2f}".format(
            *_fmt(times[1]), statistics.median(ratios), min(ratios), max(ratios))
    if encoder is None:
        enc_med, enc_spread, share = "-", "-", "-"
    else:
        enc_med, enc_spread = _fmt(encoder)
        enc_med += " (2 of 32 blocks timed)" if shape.sampled else ""
        share = f"{statistics.median(selection) / statistics.median(encoder):.2%}"
    return (f"| {device} | {shape.label} | {shape.n} | {shape.d} | {shape.l} | {method} | {kind} | {sel_med} | "
            f"{sel_spread} | {enc_med} | {enc_spread} | {share} |")


if __name__ == "__main__":
    main()
