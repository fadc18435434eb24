"""The child process of ``engine.child_outputs``: reads {"model", "engine", "requests",
"plugin"} on stdin, prints the records as one JSON line."""

from __future__ import annotations

import json
import sys

from zspa_selfcheck import engine


def main() -> None:
    spec = json.loads(sys.stdin.read())
    llm, _ = engine.open_engine(spec["model"], **spec["engine"])
    if spec["engine"].get("tensor_parallel_size", 1) == 1:  # else the model is in workers
        cls = engine.model_class_of(llm)
        if cls.__module__.startswith("zspa_vllm") != spec["plugin"]:
            raise SystemExit(f"child engine (plugin={spec['plugin']}) ran {cls.__module__}.{cls.__name__}")
    records = [engine.output_record(engine.chat(llm, request)) for request in spec["requests"]]
    engine.shutdown(llm)
    print(json.dumps(records))


if __name__ == "__main__":
    main()
