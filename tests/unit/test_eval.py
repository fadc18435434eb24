"""zspa-eval's dataset loading, scorers, sweep layout and summaries on hand-made cases."""

import json
from pathlib import Path

import pytest

from zspa_eval.dataset import Row, load_rows
from zspa_eval.report import markdown, summarize
from zspa_eval.scoring import choice_letter, is_correct, normalize, pope_scores, yes_no
from zspa_eval.sweep import UNPRUNED, Cell, Endpoint, cells


@pytest.mark.parametrize(
    "text, expected",
    [("The Red circle.", "red circle"), ("  A  dog, an apple!", "dog apple"), ("2", "2"), ("", "")],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("Yes", "yes"), ("no.", "no"), ("Yes, there is.", "yes"), ("I think no", "no"), ("maybe", None), ("yesterday", None)],
)
def test_yes_no(text, expected):
    assert yes_no(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("B", "B"), ("B.", "B"), ("(C) triangle", "C"), ("The answer is A", "A"), ("A: circle", "A"), ("circle", None), ("b", None)],
)
def test_choice_letter(text, expected):
    assert choice_letter(text) == expected


@pytest.mark.parametrize(
    "prediction, answer, answer_type, correct",
    [
        ("Yes.", "yes", "yesno", True),
        ("No", "yes", "yesno", False),
        ("unsure", "no", "yesno", False),
        ("B. white", "B", "mc", True),
        ("A", "b", "mc", False),
        ("The red.", "red", "short", True),
        ("red circle", "red", "short", False),
    ],
)
def test_is_correct(prediction, answer, answer_type, correct):
    assert is_correct(prediction, answer, answer_type) is correct


def test_is_correct_refuses_unknown_types():
    with pytest.raises(ValueError, match="'essay'"):
        is_correct("x", "x", "essay")


def test_pope_scores_by_hand():
    # truth:  yes yes yes no  no  no
    # said:   yes no  yes yes no  ???(counts as no)
    scores = pope_scores(["yes", "no", "Yes!", "yes", "no", "hmm"], ["yes", "yes", "yes", "no", "no", "no"])
    assert scores.precision == pytest.approx(2 / 3)  # tp 2, fp 1
    assert scores.recall == pytest.approx(2 / 3)  # tp 2, fn 1
    assert scores.f1 == pytest.approx(2 / 3)
    assert scores.yes_ratio == pytest.approx(3 / 6)
    assert pope_scores(["no"], ["yes"]).f1 == 0.0


def test_cells_layout():
    sweep = cells([0.5, 0.1, 1.0], [0.2, 0.4], ["zspa", "divprune", "none"])
    assert sweep[0] == UNPRUNED
    assert set(sweep[1:]) == {
        Cell("zspa", 0.5, 0.2), Cell("zspa", 0.5, 0.4), Cell("zspa", 0.1, 0.2), Cell("zspa", 0.1, 0.4),
        Cell("divprune", 0.5, None), Cell("divprune", 0.1, None),
    }
    assert Cell("zspa", 0.25, 0.2).key == "zspa(keep=0.25,core=0.2)"
    second = cells([0.5], [0.2], ["zspa", "random"], asked_second=True)
    assert second == [UNPRUNED, Cell("random", 0.5, None), Cell("zspa", 0.5, 0.2), Cell("zspa", 0.5, 0.2, asked_second=True)]
    assert second[-1].key == "zspa(keep=0.5,core=0.2,first,asked second)"
    assert second[-1].knobs() == {"prune_method": "zspa", "keep_rate": 0.5, "query_scope": "first", "core_ratio": 0.2}


def test_each_row_is_asked_another_rows_question_first():
    from zspa_eval.dataset import Row
    from zspa_eval.sweep import first_questions

    rows = [Row(str(i), "data:,", q, "a", "short") for i, q in enumerate(["A?", "A?", "B?", "C?"])]
    assert first_questions(rows) == {"0": "B?", "1": "B?", "2": "C?", "3": "A?"}
    assert first_questions(rows[:2]) == {"0": None, "1": None}  # no other question: the sweep reports an error
    with pytest.raises(ValueError, match="keep_rate"):
        cells([0.0], [0.2], ["zspa"])


def _record(cell, i, type_, correct, prediction="x", answer="x", error=None):
    return {"cell": cell.key, "knobs": {"prune_method": cell.prune_method, "keep_rate": cell.keep_rate,
            "core_ratio": cell.core_ratio}, "id": str(i), "type": type_, "answer": answer, "prediction": prediction,
            "correct": correct, "visual_tokens_kept": 10, "error": error}


def test_summaries_relative_to_unpruned_and_errors_apart():
    pruned = Cell("zspa", 0.25, 0.2)
    records = [_record(UNPRUNED, i, "short", ok) for i, ok in enumerate([True, True, True, False])]
    records += [_record(pruned, 0, "short", True), _record(pruned, 1, "short", False),
                _record(pruned, 2, "yesno", True, "yes", "yes"), _record(pruned, 3, "short", None, error="HTTP 500")]
    records += [_record(pruned, 1, "short", True)]  # a later answer for the same row wins
    by_cell = {s["cell"]: s for s in summarize(records)}
    assert by_cell[UNPRUNED.key]["accuracy"] == 0.75
    assert by_cell[pruned.key]["accuracy"] == 1.0 and by_cell[pruned.key]["errors"] == 1
    assert by_cell[pruned.key]["relative_accuracy"] == pytest.approx(1.0 / 0.75)
    assert by_cell[pruned.key]["pope_f1"] == 1.0
    text = markdown(list(by_cell.values()))
    assert "| zspa(keep=0.25,core=0.2) |" in text and "133.3%" in text
    assert "| 0.2 | 100.0 |" in text  # the core_ratio x keep_rate grid


def test_wilson_intervals_and_categories():
    cell = Cell("zspa", 0.25, 0.2)
    records = [{**_record(cell, i, "short", i < 8), "category": "colour" if i < 5 else "count"} for i in range(10)]
    (summary,) = summarize(records)
    assert summary["accuracy_95"] == pytest.approx([0.4902, 0.9433], abs=1e-4)  # 8 of 10, by hand
    assert summary["accuracy_by_category"] == {"colour": 1.0, "count": 0.6}
    (perfect,) = summarize(records[:4])
    assert perfect["accuracy_95"] == pytest.approx([0.5101, 1.0], abs=1e-4)  # 4 of 4: not [1, 1]
    text = markdown([summary])
    assert "| acc colour | acc count |" in text and "| 100.0 | 60.0 |" in text and "| 80.0 | 49.0-94.3 |" in text
    # records without categories (older results files) add no columns
    assert "acc colour" not in markdown(summarize([{k: v for k, v in r.items() if k != "category"} for r in records]))


SYNTHETIC = Path(__file__).resolve().parents[1] / "fixtures" / "eval" / "synthetic.jsonl"


def test_synthetic_dataset_loads_every_image_form():
    rows = load_rows(str(SYNTHETIC))
    assert [r.type for r in rows].count("yesno") == 4 and len(rows) == 8
    assert all(r.media == "image" and r.media_url.startswith("data:image/png;base64,") for r in rows)  # file, bare base64, data URL
    assert load_rows(str(SYNTHETIC), limit=3)[-1].id == "q2"


@pytest.mark.parametrize(
    "record, message",
    [
        ({"image": "x.png", "question": "q", "answer": "a"}, "missing 'type'"),
        ({"image": "x.png", "question": "q", "answer": "a", "type": "essay"}, "type must be one of"),
        ({"image": "no such file!", "question": "q", "answer": "a", "type": "short"}, "not a file, URL or base64"),
        ({"video": "missing.mp4", "question": "q", "answer": "a", "type": "short"}, "video 'missing.mp4' is not a file or URL"),
        ({"question": "q", "answer": "a", "type": "short"}, "needs exactly one of 'image' or 'video', got neither"),
        ({"image": "x.png", "video": "x.mp4", "question": "q", "answer": "a", "type": "short"}, "got \\['image', 'video'\\]"),
    ],
)
def test_bad_rows_name_the_row_and_field(tmp_path, record, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=message):
        load_rows(str(data))


def test_video_rows_become_video_url_parts(tmp_path):
    from tests.fixtures.images import make_video, video_mp4
    from zspa_eval.sweep import Endpoint

    (tmp_path / "clip.mp4").write_bytes(video_mp4(make_video(64, 48, 4)))
    records = [
        {"video": "clip.mp4", "question": "Does the camera move?", "answer": "yes", "type": "yesno"},
        {"video": "https://example.com/clip.mp4", "question": "What moves?", "answer": "a disc", "type": "short"},
    ]
    data = tmp_path / "video.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    file_row, url_row = load_rows(str(data))
    assert file_row.media == url_row.media == "video"
    assert file_row.media_url.startswith("data:video/mp4;base64,") and url_row.media_url == records[1]["video"]
    body = Endpoint("http://127.0.0.1:1/v1", "m").body(file_row, Cell("zspa", 0.25, 0.2))
    part = body["messages"][0]["content"][0]
    assert part == {"type": "video_url", "video_url": {"url": file_row.media_url}}
    assert body["keep_rate"] == 0.25


def test_bare_questions_go_without_the_answer_format_instruction():
    row = Row("0", "data:image/png;base64,AAAA", "What colour is the square?", "red", "short")
    text = lambda endpoint: endpoint.body(row, Cell("zspa", 0.25, 0.2))["messages"][0]["content"][1]["text"]  # noqa: E731
    assert text(Endpoint("http://127.0.0.1:1/v1", "m", instructions=False)) == "What colour is the square?"
    assert text(Endpoint("http://127.0.0.1:1/v1", "m")).startswith("What colour is the square?\n")
    assert text(Endpoint("http://127.0.0.1:1/v1", "m")) != "What colour is the square?"
