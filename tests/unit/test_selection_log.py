"""zspa_vllm.worker.selection_log: recording a selection never reads its tensors (on a GPU that
would wait for the device once per image); reading or logging it does."""

import json

import torch

from zspa_vllm.worker import selection_log


class CountingTensor:
    """Stands in for a device tensor: counts host reads."""

    def __init__(self, values):
        self.values, self.reads = values, 0

    def tolist(self):
        self.reads += 1
        return list(self.values)


def test_recording_reads_nothing_until_someone_reads(monkeypatch):
    monkeypatch.delenv("ZSPA_SELECTION_LOG", raising=False)
    kept, ids = CountingTensor([3, 5, 8]), CountingTensor([11, 12])
    selection_log.clear()
    selection_log.record(selection_log.Selection(10, kept, ids, "zspa", 1))
    assert (kept.reads, ids.reads) == (0, 0)
    (selection,) = selection_log.RECENT
    assert selection.kept == (3, 5, 8) and selection.query_ids == (11, 12)
    assert selection.kept == (3, 5, 8)
    assert (kept.reads, ids.reads) == (1, 1)  # read once, then remembered
    selection_log.clear()


def test_the_selection_log_reads_and_writes_every_field(monkeypatch, tmp_path):
    monkeypatch.setenv("ZSPA_SELECTION_LOG", str(tmp_path))
    selection_log.record(selection_log.Selection(10, torch.tensor([1, 4]), torch.tensor([7]), "relevance", 2, order=torch.tensor([4, 1])))
    (log,) = tmp_path.glob("selections-*.jsonl")
    (line,) = log.read_text().splitlines()
    assert json.loads(line) == {
        "modality": "image", "num_visual": 10, "kept": [1, 4], "core": [1, 4], "query_ids": [7],
        "method": "relevance", "num_core": 2,
    }
    selection_log.clear()


def test_core_is_the_first_num_core_of_the_order_for_zspa_only():
    order = torch.tensor([6, 2, 9, 0])  # chosen in this order: 6, 2 by relevance, then 9, 0 for diversity
    kept = torch.sort(order).values

    def core(method, num_core=2, ids=(7,), with_order=True):
        return selection_log.Selection(10, kept, ids, method, num_core, order=order if with_order else None).core

    assert core("zspa") == (2, 6)
    assert core("zspa", num_core=3) == (2, 6, 9)
    assert core("zspa", num_core=0) == ()
    assert core("relevance") == (0, 2, 6, 9)  # every token is kept for its relevance
    assert core("divprune") == ()
    assert core("zspa", ids=()) == ()  # no query: the selection was divprune's
    assert core("zspa", with_order=False) == ()


def test_selections_compare_by_content():
    a = selection_log.Selection(10, torch.tensor([1, 4]), torch.tensor([7]), "zspa", 1)
    assert a == selection_log.Selection(10, (1, 4), (7,), "zspa", 1)
    assert a != selection_log.Selection(10, (1, 5), (7,), "zspa", 1)
