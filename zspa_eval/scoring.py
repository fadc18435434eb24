"""Answer normalisation and the scores: accuracy, and POPE-style precision / recall / F1
for yes/no questions ("yes" is the positive class)."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

ANSWER_TYPES = ("yesno", "mc", "short")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize(text: str) -> str:
    """VQA-style: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def yes_no(text: str) -> str | None:
    """'yes' / 'no' from the first of those words in the prediction, else None."""
    for word in normalize(text).split():
        if word in ("yes", "no"):
            return word
    return None


def choice_letter(text: str) -> str | None:
    """The option letter a multiple-choice prediction picks: 'B', 'B.', '(B) cat',
    'The answer is B' -> 'B'."""
    match = re.search(r"(?:^|\(|\banswer is\s*)([A-Z])(?:\)|\.|:|\s|$)", text.strip())
    return match.group(1) if match else None


def is_correct(prediction: str, answer: str, answer_type: str) -> bool:
    if answer_type == "yesno":
        return yes_no(prediction) == normalize(answer)
    if answer_type == "mc":
        return choice_letter(prediction) == answer.strip().upper()
    if answer_type == "short":
        return normalize(prediction) == normalize(answer)
    raise ValueError(f"answer type must be one of {ANSWER_TYPES}, got {answer_type!r}")


@dataclass(frozen=True)
class PopeScores:
    precision: float
    recall: float
    f1: float
    yes_ratio: float  # share of predictions that say "yes"


def pope_scores(predictions: list[str], answers: list[str]) -> PopeScores:
    """Over yes/no questions; a prediction that says neither counts as "no" (as POPE's
    evaluation does)."""
    said = [yes_no(p) == "yes" for p in predictions]
    truth = [normalize(a) == "yes" for a in answers]
    tp = sum(s and t for s, t in zip(said, truth))
    fp = sum(s and not t for s, t in zip(said, truth))
    fn = sum(t and not s for s, t in zip(said, truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PopeScores(precision, recall, f1, sum(said) / len(said) if said else 0.0)
