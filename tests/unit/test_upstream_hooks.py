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
