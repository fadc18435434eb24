"""Scores per cell, laid out like the paper's tables, and the accuracy plot.

Table 1 style: one row per setting (unpruned first), accuracy per answer type, POPE
precision / recall / F1 on the yes/no rows, and the overall accuracy relative to the
unpruned run. Table 2 style: ZSPAPrune's accuracy, core_ratio x keep_rate."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from zspa_eval.scoring import ANSWER_TYPES, pope_scores
from zspa_eval.sweep import UNPRUNED


def summarize(records: list[dict]) -> list[dict]:
    """One summary per cell (latest answer per row wins; failed requests are counted
    as errors, not as wrong answers)."""
    latest: dict[tuple[str, str], dict] = {}
    for record in records:
        latest[record["cell"], record["id"]] = record
    by_cell: dict[str, list[dict]] = defaultdict(list)
    for (cell, _), record in latest.items():
        by_cell[cell].append(record)
    summaries = []
    for key, rows in by_cell.items():
        answered = [r for r in rows if r.get("error") is None]
        summary = {"cell": key, **rows[0]["knobs"], "rows": len(rows), "errors": len(rows) - len(answered),
                   "accuracy": _accuracy(answered), "accuracy_95": _wilson(answered)}
        categories = sorted({r.get("category") or "" for r in answered} - {""})
        summary["accuracy_by_category"] = {c: _accuracy([r for r in answered if r.get("category") == c]) for c in categories}
        for answer_type in ANSWER_TYPES:
            summary[f"accuracy_{answer_type}"] = _accuracy([r for r in answered if r["type"] == answer_type])
        yes_no = [r for r in answered if r["type"] == "yesno"]
        if yes_no:
            pope = pope_scores([r["prediction"] for r in yes_no], [r["answer"] for r in yes_no])
            summary.update(pope_precision=pope.precision, pope_recall=pope.recall, pope_f1=pope.f1, yes_ratio=pope.yes_ratio)
        kept = [r["visual_tokens_kept"] for r in answered if r.get("visual_tokens_kept") is not None]
        summary["mean_visual_tokens_kept"] = sum(kept) / len(kept) if kept else None
        summaries.append(summary)
    reference = next((s for s in summaries if s["cell"] == UNPRUNED.key), None)
    for summary in summaries:
        ok = reference and reference["accuracy"] and summary["accuracy"] is not None
        summary["relative_accuracy"] = summary["accuracy"] / reference["accuracy"] if ok else None
    return sorted(summaries, key=lambda s: (s["cell"] != UNPRUNED.key, s["prune_method"], -s["keep_rate"], s["core_ratio"] or 0))


def _accuracy(records: list[dict]) -> float | None:
    return sum(r["correct"] for r in records) / len(records) if records else None


def wilson(hits: int, count: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of ``hits`` out of ``count`` (sound at 0 and all)."""
    share = hits / count
    centre = (share + z * z / (2 * count)) / (1 + z * z / count)
    half = z * math.sqrt(share * (1 - share) / count + z * z / (4 * count * count)) / (1 + z * z / count)
    return max(0.0, centre - half), min(1.0, centre + half)


def _wilson(records: list[dict]) -> list[float] | None:
    return list(wilson(sum(r["correct"] for r in records), len(records))) if records else None


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(summaries: list[dict]) -> str:
    types = [t for t in ANSWER_TYPES if any(s[f"accuracy_{t}"] is not None for s in summaries)]
    categories = sorted({c for s in summaries for c in s.get("accuracy_by_category", {})})
    header = ["setting", "visual tokens kept", *[f"acc {t}" for t in types], *[f"acc {c}" for c in categories],
              "POPE P", "POPE R", "POPE F1", "accuracy", "95% interval", "vs unpruned", "errors"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        kept = "-" if s["mean_visual_tokens_kept"] is None else f"{s['mean_visual_tokens_kept']:.0f}"
        interval = s.get("accuracy_95")
        cells = [s["cell"], kept, *[_pct(s[f"accuracy_{t}"]) for t in types],
                 *[_pct(s.get("accuracy_by_category", {}).get(c)) for c in categories], _pct(s.get("pope_precision")),
                 _pct(s.get("pope_recall")), _pct(s.get("pope_f1")), _pct(s["accuracy"]),
                 "-" if interval is None else f"{_pct(interval[0])}-{_pct(interval[1])}",
                 _pct(s["relative_accuracy"]) + ("%" if s["relative_accuracy"] is not None else ""), str(s["errors"])]
        lines.append("| " + " | ".join(cells) + " |")
    text = "### Accuracy per setting (percent)\n\n" + "\n".join(lines) + "\n"
    zspa = [s for s in summaries if s["prune_method"] == "zspa" and not s.get("asked_second")]
    if zspa:
        rates = sorted({s["keep_rate"] for s in zspa}, reverse=True)
        cores = sorted({s["core_ratio"] for s in zspa})
        grid = {(s["core_ratio"], s["keep_rate"]): s["accuracy"] for s in zspa}
        lines = ["| core_ratio \\ keep_rate | " + " | ".join(f"{r:g}" for r in rates) + " |", "|" + "---|" * (len(rates) + 1)]
        lines += [f"| {c:g} | " + " | ".join(_pct(grid.get((c, r))) for r in rates) + " |" for c in cores]
        text += "\n### ZSPAPrune accuracy by core_ratio and keep_rate (percent)\n\n" + "\n".join(lines) + "\n"
    return text


def plot(summaries: list[dict], path: Path) -> None:
    """Accuracy against keep rate: one line per ZSPAPrune core ratio, the baselines
    dashed, the unpruned accuracy as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for s in summaries:
        if s["accuracy"] is None or s["cell"] == UNPRUNED.key:
            continue
        label = f"zspa core={s['core_ratio']:g}" if s["prune_method"] == "zspa" else s["prune_method"]
        label += ", first, asked second" if s.get("asked_second") else ""
        series[label].append((s["keep_rate"], 100 * s["accuracy"]))
    for label, points in sorted(series.items()):
        xs, ys = zip(*sorted(points))
        style = ":" if "asked second" in label else "-" if label.startswith("zspa") else "--"
        ax.plot(xs, ys, marker="o", linestyle=style, label=label)
    reference = next((s for s in summaries if s["cell"] == UNPRUNED.key and s["accuracy"] is not None), None)
    if reference:
        ax.axhline(100 * reference["accuracy"], color="gray", linestyle=":", label="unpruned")
    ax.set_xlabel("keep_rate (share of visual tokens kept)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy against keep rate")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
