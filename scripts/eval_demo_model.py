"""The demo model's accuracy table: write its held-out synthetic set (zspa_demo/scenes.py),
start ``zspa-serve --demo``, run ``zspa-eval`` over keep rates x core ratios x methods and
keep the report and plot (results.jsonl resumes an interrupted run).

    python scripts/eval_demo_model.py [--rows 300] [--out benchmarks/results/demo_accuracy]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from zspa_serve.launch import ServerProcess  # noqa: E402
from zspa_eval.cli import main as zspa_eval  # noqa: E402
from zspa_demo.scenes import write_eval_set  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=500, help="held-out questions (the first seeds above training's)")
    p.add_argument("--keep-rates", default="0.5,0.25,0.1,0.05")
    p.add_argument("--core-ratios", default="0,0.2,0.4,1")
    p.add_argument("--methods", default="zspa,relevance,divprune,random")
    p.add_argument("--asked-second", action="store_true", help="zspa-eval --asked-second: each zspa setting also "
                   "under query_scope first, asked after another question about its image")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/demo_accuracy")
    args = p.parse_args()

    data = write_eval_set(Path(tempfile.mkdtemp(prefix="zspa-shapes-")), args.rows)
    log = args.out / "server.log"
    args.out.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(["--demo"], log)
    try:
        server.wait_healthy(timeout=600)
        return zspa_eval(["--base-url", f"{server.base_url}/v1", "--data", str(data), "--out", str(args.out),
                          "--keep-rates", args.keep_rates, "--core-ratios", args.core_ratios,
                          "--methods", args.methods, "--max-tokens", "4", "--concurrency", "8",
                          "--bare-questions",  # the demo model was trained on the questions alone
                          *(["--asked-second"] if args.asked_second else [])])
    finally:
        server.stop()
        log.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
