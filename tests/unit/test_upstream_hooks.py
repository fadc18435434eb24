"""What the installed vLLM does at run time that the plugin relies on (the sources of
every supported release are pinned in tests/upstream/pins.py, checked by
test_upstream_sources.py)."""

def test_hash_factors_still_include_processor_kwargs():
    """vLLM hashes every flat processor kwarg into every item of a prompt: why the
    processor computes item identities itself (only images carry their query; a video's
    hash stays stock) instead of relying on a kwarg."""
    from vllm.multimodal.parse import MultiModalDataParser
    from vllm.multimodal.processing.inputs import ProcessorInputs
    from PIL import Image

    items = MultiModalDataParser().parse_mm_data({"image": Image.new("RGB", (8, 8))})
    hashes = {
        ProcessorInputs([1], items, hf_processor_mm_kwargs=kw).get_mm_hashes("m", "sha256")["image"][0]
        for kw in ({}, {"zspa": "a"}, {"zspa": "b"})
    }
    assert len(hashes) == 3


def test_the_runners_hooked_are_the_ones_that_run():
    """zspa_vllm.worker.runner_hooks wraps GPUModelRunner._gather_mm_embeddings (V1) and MRv2's
    maybe_create_mm_pruner: vLLM's CPU runners must be those GPU runners underneath."""
    from vllm.v1.worker import gpu_model_runner
    from vllm.v1.worker.cpu.model_runner import CPUModelRunner as CPUModelRunnerV2
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu import model_runner

    assert issubclass(CPUModelRunner, gpu_model_runner.GPUModelRunner)
    assert "_gather_mm_embeddings" not in CPUModelRunner.__dict__
    assert issubclass(CPUModelRunnerV2, model_runner.GPUModelRunner)


def test_config_hooks_map_is_a_dict():
    """zspa_vllm.engine.config_checks puts its refusals into this per-architecture map."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    assert isinstance(MODELS_CONFIG_MAP, dict)


def test_scheduler_choice_our_factory_mirrors():
    """zspa_vllm.engine.encoder_budget.scheduler builds, charging unpruned tokens, the class vLLM
    picks when no scheduler class is named."""
    from vllm.config import SchedulerConfig
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    from zspa_vllm.engine import encoder_budget

    for async_scheduling, expected in ((True, AsyncScheduler), (False, Scheduler)):
        config = SchedulerConfig(max_model_len=64, is_encoder_decoder=False, async_scheduling=async_scheduling)
        assert config.get_scheduler_cls() is expected
    config = SchedulerConfig(max_model_len=64, is_encoder_decoder=False, scheduler_cls="zspa_vllm.engine.encoder_budget.scheduler")
    assert config.get_scheduler_cls() is encoder_budget.scheduler


def test_the_cpu_backend_builds_no_bidirectional_image_block():
    """Gemma 3 (zspa_vllm/models/gemma3.py): on the CPU attention backend images attend
    causally (stock vLLM included); GPU backends use the placeholder's embed range
    (pinned in tests/upstream/pins.py)."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    assert CPUAttentionBackend.supports_mm_prefix() is False


def test_our_mrv2_pruner_passes_steps_without_pruned_rows_through():
    """The pruner zspa_vllm.worker.runner_hooks builds for our M-RoPE models hands a step
    whose rows are all at the LLM width (nothing pruned: keep_rate 1, other families'
    media) back untouched, as stock vLLM without a pruner does; a step with one pruned
    item (rows wider by the position columns) goes through vLLM's own pass."""
    import pytest
    import torch
    from vllm.v1.worker.gpu.model_states import mm_pruning

    from zspa_vllm.worker.mrope import POS_CHANNELS
    from zspa_vllm.worker.runner_hooks import _unpruned_steps_untouched

    pruner_cls = _unpruned_steps_untouched(mm_pruning.MultiModalPruner)
    assert issubclass(pruner_cls, mm_pruning.MultiModalPruner)
    assert _unpruned_steps_untouched(mm_pruning.MultiModalPruner) is pruner_cls  # one class per vLLM class
    # no model, positions or cache: the untouched path must not reach any of them
    pruner = pruner_cls(None, None, None, 8)
    rows = [torch.randn(5, 8), torch.randn(3, 8)]
    assert pruner.recompute(rows, None, None) is rows
    with pytest.raises(AttributeError, match="idx_mapping_np"):  # vLLM's pass reads the batch
        pruner.recompute([rows[0], torch.randn(2, 8 + POS_CHANNELS)], None, None)
