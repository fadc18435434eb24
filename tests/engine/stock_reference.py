"""Engine answers computed in a child process: stock vLLM, or an engine set up unlike
the test process's (e.g. tensor parallel, which needs worker processes).

vLLM loads general plugins once per process, and the plugin replaces vLLM's model
classes in the registry; so "the same request on stock vLLM" must come from another
process. Images travel as (width, height, seed) triples for tests.fixtures.images.

    stock_outputs("llava-1.5", [{"images": [(336, 336, 0)], "question": "...", "max_tokens": 3}])
    -> [{"prompt_token_ids": [...], "token_ids": [...], "logprobs": [{id: lp, ...}, ...]}]

A request may carry "knobs" (its mm_processor_kwargs); engine overrides may name another
"model" directory than the family's fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def stock_outputs(family: str, requests: list[dict], **engine_overrides) -> list[dict]:
    return child_outputs(family, requests, plugin=False, **engine_overrides)


def child_outputs(family: str, requests: list[dict], *, plugin: bool, env=None, **engine_overrides) -> list[dict]:
    """Run ``requests`` on a fresh engine in a child process, with or without the plugin."""
    env = {**os.environ, **(env or {})}
    if plugin:
        env.pop("VLLM_PLUGINS", None)  # load every installed plugin: zspa included
    else:
        env["VLLM_PLUGINS"] = ""
    spec = json.dumps({"family": family, "requests": requests, "overrides": engine_overrides, "plugin": plugin})
    proc = subprocess.run(
        [sys.executable, "-m", "tests.engine.stock_reference"],
        input=spec,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child engine run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def request_messages(request: dict) -> list[dict]:
    """OpenAI-style user turn for a request spec: its images, then its question (after
    a system turn if the spec has "system")."""
    from tests.fixtures.images import make_image

    parts = [{"type": "image_pil", "image_pil": make_image(w, h, seed)} for w, h, seed in request["images"]]
    if request.get("question"):
        parts.append({"type": "text", "text": request["question"]})
    system = [{"role": "system", "content": request["system"]}] if request.get("system") else []
    return [*system, {"role": "user", "content": parts}]


def output_record(output) -> dict:
    return {
        "prompt_token_ids": list(output.prompt_token_ids),
        "token_ids": list(output.outputs[0].token_ids),
        "logprobs": [{str(t): lp.logprob for t, lp in step.items()} for step in output.outputs[0].logprobs],
    }


def _main() -> None:
    from tests.engine import harness

    harness.set_engine_environment()  # where the parent's environment left it unset

    spec = json.loads(sys.stdin.read())
    llm, _ = harness.start_engine(spec["family"], **spec["overrides"])
    if spec["overrides"].get("tensor_parallel_size", 1) == 1:  # else the model is in workers
        cls = harness.model_class_of(llm)
        if cls.__module__.startswith("zspa_vllm") != spec["plugin"]:
            raise SystemExit(f"child engine (plugin={spec['plugin']}) ran {cls.__module__}.{cls.__name__}")
    records = []
    for request in spec["requests"]:
        (out,) = llm.chat(
            request_messages(request),
            harness.sampling(max_tokens=request.get("max_tokens", 3)),
            mm_processor_kwargs=request.get("knobs"),
            use_tqdm=False,
        )
        records.append(output_record(out))
    harness.free_engine()
    print(json.dumps(records))


if __name__ == "__main__":
    _main()
