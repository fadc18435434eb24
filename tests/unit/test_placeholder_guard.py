"""The processor refuses a prompt whose shortened image (or video) runs the model would
not fill with exactly as many rows (zspa_vllm.frontend.processor._check_placeholders)."""

import pytest
import torch
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems, PlaceholderRange
from transformers import BatchFeature

from zspa_vllm.frontend.processor import _check_placeholders


def items(modality="image", **fields):
    config = {name: MultiModalFieldConfig.batched(modality) for name in fields}
    return MultiModalKwargsItems.from_hf_inputs(BatchFeature(fields), config)


def result(kwargs, lengths, modality="image"):
    placeholders = [PlaceholderRange(offset=10 * i, length=n) for i, n in enumerate(lengths)]
    return {"mm_kwargs": kwargs, "mm_placeholders": {modality: placeholders}}


def test_runs_that_match_the_kept_rows_pass():
    kwargs = items(pixel_values=torch.zeros(2, 3), zspa_image_num_keep=torch.tensor([5, 7]))
    _check_placeholders(result(kwargs, [5, 7]), "image")


def test_a_run_the_model_would_fill_otherwise_is_refused():
    kwargs = items(pixel_values=torch.zeros(2, 3), zspa_image_num_keep=torch.tensor([5, 7]))
    with pytest.raises(ValueError, match="image 1 has 6 placeholder tokens but the model would hand over 7 rows"):
        _check_placeholders(result(kwargs, [5, 6]), "image")


def test_an_item_without_our_fields_is_refused():
    # e.g. an input path that never reached the fields: vLLM would take the first l of n rows
    kwargs = items(image_embeds=torch.zeros(1, 9, 4))
    with pytest.raises(ValueError, match="image 0 has 3 placeholder tokens but the model would hand over all its rows"):
        _check_placeholders(result(kwargs, [3]), "image")


def test_items_served_from_the_processor_cache_are_not_rechecked():
    kwargs = {"image": [None]}  # vLLM sends no data for a cached item
    _check_placeholders(result(kwargs, [3]), "image")


def test_video_runs_are_checked_by_their_own_fields():
    kwargs = items("video", pixel_values_videos=torch.zeros(1, 3), zspa_video_num_keep=torch.tensor([12]))
    _check_placeholders(result(kwargs, [12], "video"), "video")
    with pytest.raises(ValueError, match="video 0 has 11 placeholder tokens but the model would hand over 12 rows"):
        _check_placeholders(result(kwargs, [11], "video"), "video")
