"""zspa-selfcheck, the installed console command, as a user runs it: on this CPU with the
test environment's runner (MRv2 unless VLLM_USE_V2_MODEL_RUNNER=0), it passes for a few
families, and it fails when the plugin's M-RoPE position rule is broken."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine import harness
from zspa_selfcheck.checks import CHECKS

pytestmark = pytest.mark.engine

SELFCHECK = Path(sys.executable).parent / "zspa-selfcheck"  # the console script pip installed
# a 1-D RoPE family, an M-RoPE one, and a bfloat16 hybrid one
FAMILIES = ["llava-1.5", "qwen2.5-vl", "qwen3.5"]


def run(argv: list[str], tmp_path: Path, prelude: str | None = None):
    """zspa-selfcheck with ``argv`` (through the console script, or, with a ``prelude`` of
    Python run first in its process, through its main()); (exit code, output, report)."""
    report = tmp_path / "report.json"
    argv = [*argv, "--json", str(report)]
    if prelude is None:
        command = [str(SELFCHECK), *argv]
    else:
        command = [sys.executable, "-c", f"{prelude}\nimport sys\nfrom zspa_selfcheck.cli import main\nsys.exit(main({argv!r}))"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=840, cwd=tmp_path)
    print(proc.stdout)
    return proc.returncode, proc.stdout + proc.stderr[-3000:], (json.loads(report.read_text()) if report.exists() else None)


def test_quick_selfcheck_passes_and_reports_each_figure(tmp_path):
    code, output, report = run(["--device", "cpu", "--quick", "--families", ",".join(FAMILIES)], tmp_path)
    assert code == 0, output
    results = report["results"]
    assert [(r["family"], r["check"]) for r in results] == [(f, c) for f in FAMILIES for c in CHECKS]
    assert {(r["check"], r["status"]) for r in results} == {*((c, "PASS") for c in CHECKS if c != "cuda-graphs"), ("cuda-graphs", "SKIP")}
    runner = "MRv2" if harness.mrv2_requested() else "V1"
    assert {f: report["families"][f]["runner"] for f in FAMILIES} == dict.fromkeys(FAMILIES, runner)
    assert report["families"]["qwen3.5"]["dtype"] == "bfloat16"
    assert report["device"] == "cpu" and report["versions"]["vllm"].startswith("0.3")
    figures = {(r["family"], r["check"]): r["figures"] for r in results}
    for family in FAMILIES:
        tol = harness.tolerance(family)
        assert figures[family, "stock"]["max_dlogprob"] <= tol.schedule < figures[family, "stock"]["other_image"]
        assert figures[family, "schedules"]["prefix_hit_tokens"] > 0  # prefix caching really served blocks
        transformers = figures[family, "transformers"]
        if family in harness.QWEN_FAMILIES:
            assert transformers["unpruned"] <= tol.hf < transformers["consecutive"]
        else:
            assert transformers["kept"] <= tol.hf < transformers["first rows"]
    assert f"{len(FAMILIES) * 5} passed, 0 failed, {len(FAMILIES)} skipped" in output


# Kept tokens packed into the first cells of the grid (their own rows, another cell's
# position): the kind of bug that still produces fluent text.
PACKED_POSITIONS = """
import torch
from zspa_vllm.worker import mrope
right = mrope.PrunedMropeMixin._zspa_kept_rows
def packed(self, visual, kept, modality, item):
    rows = right(self, visual, kept, modality, item)
    first = right(self, visual, torch.arange(len(kept), device=kept.device), modality, item)
    rows[:, -mrope.POS_CHANNELS:] = first[:, -mrope.POS_CHANNELS:]
    return rows
mrope.PrunedMropeMixin._zspa_kept_rows = packed
"""


def test_a_broken_position_rule_fails_the_transformers_check(tmp_path):
    argv = ["--device", "cpu", "--quick", "--families", "qwen2.5-vl", "--checks", "placeholders,transformers"]
    code, output, report = run(argv, tmp_path, prelude=PACKED_POSITIONS)
    assert code == 1, output
    statuses = {r["check"]: r["status"] for r in report["results"]}
    assert statuses == {"placeholders": "PASS", "transformers": "FAIL"}  # the counts are right, the positions not
    (failed,) = [r for r in report["results"] if r["status"] == "FAIL"]
    assert "against transformers at the unpruned positions" in failed["measured"]
    assert "FAIL  qwen2.5-vl       transformers" in output
    assert "1 passed, 1 failed, 0 skipped" in output


def test_a_device_vllm_does_not_run_on_is_refused(tmp_path):
    code, output, report = run(["--device", "cuda", "--families", "llava-1.5"], tmp_path)
    assert code == 2 and report is None
    assert "--device cuda, but this vLLM build runs on 'cpu'" in output
