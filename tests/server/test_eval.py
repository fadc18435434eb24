"""zspa-eval end to end against the shared zspa-serve demo server, with the synthetic
dataset under tests/fixtures/eval (a pipeline check: those questions are not the demo model's kind)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.server.conftest import API_KEY
from zspa_eval.cli import main
from zspa_eval.dataset import load_rows
from zspa_eval.scoring import is_correct
from zspa_eval.sweep import read_results
from zspa_vllm.core.selection import num_kept

pytestmark = pytest.mark.server

DATA = str(Path(__file__).resolve().parents[1] / "fixtures" / "eval" / "synthetic.jsonl")
N = 144  # the demo model's visual tokens per image


def run(server, out, *extra) -> int:
    argv = ["--base-url", f"{server.base_url}/v1", "--api-key", API_KEY, "--data", DATA, "--out", str(out),
            "--concurrency", "4", "--max-tokens", "3", *extra]
    return main(argv)


def test_sweep_scores_reports_plots_and_resumes(server, tmp_path, capsys):
    out = tmp_path / "run"
    sweep = ["--keep-rates", "0.5,0.25", "--core-ratios", "0.2,0.4", "--methods", "zspa,divprune"]
    assert run(server, out, *sweep) == 0
    records = read_results(out / "results.jsonl")
    # unpruned + zspa 2x2 + divprune 2 = 7 settings, x 8 rows
    assert len(records) == 7 * 8 and all(r["error"] is None for r in records)
    assert len({(r["cell"], r["id"]) for r in records}) == 56
    for r in records:
        assert r["visual_tokens"] == N
        assert r["visual_tokens_kept"] == num_kept(N, r["knobs"]["keep_rate"])
        assert r["correct"] == is_correct(r["prediction"], r["answer"], r["type"])
    report = (out / "report.md").read_text()
    assert "| none(keep=1) |" in report and "| divprune(keep=0.25) |" in report
    assert "core_ratio \\ keep_rate" in report
    png = (out / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    capsys.readouterr()
    assert run(server, out, *sweep) == 0  # everything answered: nothing sent again
    assert "0 requests sent (56 resumed" in capsys.readouterr().err
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-5]) + "\n")  # as if interrupted
    assert run(server, out, *sweep) == 0
    assert "5 requests sent (51 resumed" in capsys.readouterr().err
    assert len(read_results(out / "results.jsonl")) == 56


def test_knobs_inside_mm_processor_kwargs(server, tmp_path):
    out = tmp_path / "native"
    argv = ["--keep-rates", "0.1", "--core-ratios", "0.2", "--methods", "zspa", "--limit", "2",
            "--knobs-field", "mm_processor_kwargs", "--no-plot"]
    assert run(server, out, *argv) == 0
    kept = sorted(r["visual_tokens_kept"] for r in read_results(out / "results.jsonl"))
    assert kept == [num_kept(N, 0.1)] * 2 + [N, N]


def test_asked_second_sends_another_question_first(server, tmp_path):
    """--asked-second: each zspa setting again with query_scope first, each row's image
    asked another row's question first (two requests, counted by the server's kept-token
    counter); random, a question-free baseline, alongside."""
    import httpx

    def kept_tokens() -> dict:
        text = httpx.get(f"{server.base_url}/metrics").text
        return {m: sum(float(v) for v in re.findall(r'^zspa_visual_tokens_kept_total\{method="%s"\} (\S+)$' % m, text, re.M))
                for m in ("zspa", "random")}

    out = tmp_path / "second"
    before = kept_tokens()
    argv = ["--keep-rates", "0.25", "--core-ratios", "0.2", "--methods", "zspa,random", "--limit", "3", "--asked-second"]
    assert run(server, out, *argv) == 0
    after = kept_tokens()
    records = read_results(out / "results.jsonl")
    by_cell = {}
    for r in records:
        by_cell.setdefault(r["cell"], []).append(r)
    assert sorted(by_cell) == ["none(keep=1)", "random(keep=0.25)", "zspa(keep=0.25,core=0.2)",
                               "zspa(keep=0.25,core=0.2,first,asked second)"]
    questions = {row.id: row.question for row in load_rows(DATA)}
    second = by_cell["zspa(keep=0.25,core=0.2,first,asked second)"]
    assert all(r["error"] is None and r["knobs"]["asked_second"] for r in second)
    assert all(r["asked_first"] in questions.values() and r["asked_first"] != questions[r["id"]] for r in second)
    assert "asked_first" not in by_cell["zspa(keep=0.25,core=0.2)"][0]
    k25 = num_kept(N, 0.25)
    assert after["zspa"] - before["zspa"] == (3 + 2 * 3) * k25  # fresh, and asked second after a first question
    assert after["random"] - before["random"] == 3 * k25
    report = (out / "report.md").read_text()
    assert "| zspa(keep=0.25,core=0.2,first,asked second) |" in report


def test_bad_sweep_values_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--base-url", "http://127.0.0.1:9/v1", "--data", DATA, "--out", str(tmp_path), "--keep-rates", "1.5"])
    assert exit_info.value.code == 2
    assert "keep_rate must be in (0, 1], got 1.5" in capsys.readouterr().err
