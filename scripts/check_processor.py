"""Run our multimodal processors on another vLLM release's API-server code, on this CPU,
and compare every family's placeholder counts with the installed vLLM's.

vLLM 0.33 and 0.34 ship only as CUDA wheels, but their processors (the front end: prompt
placeholders, knobs, item identities) are plain Python and run on a CPU next to the CUDA
build of torch. This builds that environment once under ~/.cache/zspa-vllm (about 6.6 GB,
1.5 minutes), then asks each family's processor, there and here, for one image unpruned
and at keep_rate 0.25.

    make check-processor VLLM=0.34.0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = {"0.34.0": REPO / "requirements" / "vllm-0.34-processor.txt"}
KNOBS = ({}, {"keep_rate": 0.25})


def measure() -> dict:
    """{family: {knobs: [placeholder embeds, prompt length]}} with this interpreter's vLLM."""
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")  # no model runner is built here
    sys.path.insert(0, str(REPO))
    import vllm
    from PIL import Image
    from vllm import ModelRegistry
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.processing.context import TimingContext
    from vllm.multimodal.processing.inputs import ProcessorInputs

    import zspa_vllm
    from tests.families import FAMILIES, fixture_path

    for architecture, target in zspa_vllm.MODEL_OVERRIDES.items():
        ModelRegistry.register_model(architecture, target)
    results = {"vllm": vllm.__version__}
    for name, family in sorted(FAMILIES.items()):
        path = str(fixture_path(name))
        config = ModelConfig(model=path, tokenizer=path, dtype="float32", limit_mm_per_prompt={"image": 1})
        processor = MULTIMODAL_REGISTRY.create_processor(config)
        prompt = processor.info.get_tokenizer().encode(family.prompt_format.format(q="What is red?"))
        row = {"processor": type(processor).__name__}
        for knobs in KNOBS:
            items = processor.info.parse_mm_data({"image": Image.new("RGB", (448, 336), (200, 0, 0))})
            out = processor.apply(ProcessorInputs(prompt, items, hf_processor_mm_kwargs=knobs), TimingContext(enabled=False))
            place = out["mm_placeholders"]["image"][0]
            row[json.dumps(knobs)] = [place.get_num_embeds(), len(out["prompt_token_ids"])]
        results[name] = row
    return results


def environment(version: str) -> Path:
    """The python of a venv holding vLLM ``version``'s wheel and its pinned requirements."""
    if version not in REQUIREMENTS:
        sys.exit(f"check_processor: no pinned requirements for vLLM {version} (have {sorted(REQUIREMENTS)})")
    root = Path.home() / ".cache" / "zspa-vllm" / f"venv-vllm-{version}"
    python = root / "bin" / "python"
    if not (root / ".complete").exists():
        print(f"check_processor: building {root} (about 1.5 minutes, 6.6 GB)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--no-deps"]
        subprocess.run([*pip, "-r", str(REQUIREMENTS[version])], check=True)
        subprocess.run([*pip, f"vllm=={version}"], check=True)
        (root / ".complete").touch()
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm", default="0.34.0", help="the release to compare with the installed one")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print("RESULT " + json.dumps(measure()))
        return 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    runs = {}
    for python in (Path(sys.executable), environment(args.vllm)):
        out = subprocess.run([str(python), __file__, "--measure"], capture_output=True, text=True, env=env)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
            return 1
        result = json.loads(lines[-1][len("RESULT "):])
        runs[result.pop("vllm")] = result
    (here, here_rows), (there, there_rows) = runs.items()
    print(f"{'family':16} {'processor':40} " + "  ".join(f"{json.dumps(k) if k else 'unpruned':>20}" for k in KNOBS) + f"   vLLM {there} vs {here}")
    differ = 0
    for family, row in here_rows.items():
        other = there_rows.get(family)
        same = other == row
        differ += not same
        cells = "  ".join(f"{str(row[json.dumps(k)]):>20}" for k in KNOBS)
        print(f"{family:16} {row['processor']:40} {cells}   {'same' if same else f'DIFFERENT: {other}'}")
    print(f"{len(here_rows) - differ} of {len(here_rows)} families: the same placeholder counts and prompt lengths on vLLM {there} as on {here}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
