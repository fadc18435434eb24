"""Fails loudly when a vLLM internal that the plugin overrides or calls changes shape.

The plugin is pinned to vLLM 0.32; these signatures are the ones its overrides were
written against. A mismatch here means: re-read the upstream code before bumping vLLM.
"""

import dataclasses
import inspect

import pytest

HOOKS = {
    # processor side (zspa_vllm/processor.py)
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor.apply": "(self, inputs: vllm.multimodal.processing.inputs.ProcessorInputs, timing_ctx: vllm.multimodal.processing.context.TimingContext) -> vllm.inputs.engine.MultiModalInput",
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor._apply_hf_processor_main": "(self, mm_items: vllm.multimodal.parse.MultiModalDataItems, hf_kwargs: collections.abc.Mapping[str, object]) -> object",
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_mm_fields_config": "(self, hf_inputs: object, hf_processor_mm_kwargs: collections.abc.Mapping[str, object]) -> collections.abc.Mapping[str, vllm.multimodal.inputs.MultiModalFieldConfig]",
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_prompt_updates": "(self, mm_items: vllm.multimodal.parse.MultiModalDataItems, hf_processor_mm_kwargs: collections.abc.Mapping[str, object], out_mm_kwargs: vllm.multimodal.inputs.MultiModalKwargsItems) -> collections.abc.Sequence[vllm.multimodal.processing.processor.PromptUpdate]",
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor.__init__": "(self, info: ~_I, dummy_inputs: 'BaseDummyInputsBuilder[_I]') -> None",
    "vllm.multimodal.processing.inputs:ProcessorInputs.get_mm_hashes": "(self, model_id: str, hash_algorithm: Literal['blake3', 'sha256', 'sha512']) -> collections.abc.Mapping[str, list[str]]",
    "vllm.multimodal.registry:MultiModalRegistry.register_processor": "(self, processor: vllm.multimodal.registry.MultiModalProcessorFactory[~_I], *, info: vllm.multimodal.registry.ProcessingInfoFactory[~_I], dummy_inputs: vllm.multimodal.registry.DummyInputsBuilderFactory[~_I])",
    "vllm.multimodal.inputs:MultiModalFieldConfig.batched": "(modality: str, *, keep_on_cpu: bool = False)",
    # per-item identities, cache-missing items, fields for embeddings too (zspa_vllm/processor.py)
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_mm_hashes": "(self, inputs: vllm.multimodal.processing.inputs.ProcessorInputs) -> collections.abc.Mapping[str, list[str]]",
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_cache_missing_processor_kwargs": "(self, inputs: vllm.multimodal.processing.inputs.ProcessorInputs, mm_is_cached: dict[str, list[bool]]) -> collections.abc.Mapping[str, object]",
    "vllm.multimodal.parse:EmbeddingItems.get_feature_size": "(self, item_idx: int) -> int",
    "vllm.multimodal.hasher:MultiModalHasher.hash_kwargs": "(algorithm: Literal['blake3', 'sha256', 'sha512'], /, **kwargs: object) -> str",
    "vllm.multimodal.inputs:PlaceholderRange.get_num_embeds": "(self) -> int",
    # start-up refusals (zspa_vllm/config_checks.py)
    "vllm.model_executor.models.config:VerifyAndUpdateConfig.verify_and_update_config": "(vllm_config: 'VllmConfig') -> None",
    "vllm.model_executor.models.config:VerifyAndUpdateConfig.verify_and_update_model_config": "(model_config: 'ModelConfig') -> None",
    # the encoder-output cache's rank (zspa_vllm/model.py)
    "vllm.distributed.parallel_state:get_tensor_model_parallel_rank": "() -> int",
    # one run of embed positions per item (zspa_vllm/one_run.py)
    "vllm.multimodal.processing.processor:PromptUpdateDetails.select_token_id": "(seq: list[int], embed_token_id: int) -> 'PromptUpdateDetails'",
    # model side (zspa_vllm/model.py, zspa_vllm/models/llava.py)
    "vllm.model_executor.models.llava:LlavaForConditionalGeneration.embed_multimodal": "(self, **kwargs: object) -> list[torch.Tensor] | torch.Tensor | tuple[torch.Tensor, ...]",
    "vllm.model_executor.models.llava:BaseLlavaMultiModalProcessor._get_prompt_updates": "(self, mm_items: vllm.multimodal.parse.MultiModalDataItems, hf_processor_mm_kwargs: collections.abc.Mapping[str, object], out_mm_kwargs: vllm.multimodal.inputs.MultiModalKwargsItems) -> collections.abc.Sequence[vllm.multimodal.processing.processor.PromptUpdate]",
    "vllm.model_executor.models.llava:_build_llava_or_pixtral_hf_processor": "(info: ~_I, dummy_inputs: vllm.multimodal.processing.dummy_inputs.BaseDummyInputsBuilder[~_I]) -> vllm.multimodal.processing.processor.BaseMultiModalProcessor",
    "vllm.model_executor.models.llava:BaseLlavaProcessingInfo.get_num_image_tokens": "(self, *, image_width: int, image_height: int) -> int",
    # LLaVA-NeXT (zspa_vllm/models/llava_next.py)
    "vllm.model_executor.models.llava_next:LlavaNextForConditionalGeneration.embed_multimodal": "(self, **kwargs: object) -> list[torch.Tensor] | torch.Tensor | tuple[torch.Tensor, ...]",
    "vllm.model_executor.models.llava_next:LlavaNextProcessingInfo.get_num_image_tokens": "(self, *, image_width: int, image_height: int) -> int",
    "vllm.model_executor.models.llava_next:LlavaNextMultiModalProcessor._get_prompt_updates": "(self, mm_items: vllm.multimodal.parse.MultiModalDataItems, hf_processor_mm_kwargs: collections.abc.Mapping[str, object], out_mm_kwargs: vllm.multimodal.inputs.MultiModalKwargsItems) -> collections.abc.Sequence[vllm.multimodal.processing.processor.PromptUpdate]",
    # Qwen2-VL (zspa_vllm/models/qwen2_vl.py, qwen.py, zspa_vllm/mrope.py)
    "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration.embed_multimodal": "(self, **kwargs: object) -> list[torch.Tensor] | torch.Tensor | tuple[torch.Tensor, ...]",
    "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration.get_mrope_input_positions": "(self, input_tokens: list[int], mm_features: list[vllm.multimodal.inputs.MultiModalFeatureSpec]) -> tuple[torch.Tensor, int]",
    "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration.get_encoder_cudagraph_config": "(self)",
    "vllm.model_executor.models.qwen2_vl:Qwen2VLProcessingInfo.get_hf_processor": "(self, **kwargs: object) -> transformers.models.qwen2_vl.processing_qwen2_vl.Qwen2VLProcessor",
    "vllm.model_executor.models.qwen2_vl:Qwen2VLMultiModalProcessor._get_prompt_updates": "(self, mm_items: vllm.multimodal.parse.MultiModalDataItems, hf_processor_mm_kwargs: collections.abc.Mapping[str, typing.Any], out_mm_kwargs: vllm.multimodal.inputs.MultiModalKwargsItems) -> collections.abc.Sequence[vllm.multimodal.processing.processor.PromptUpdate]",
    # Qwen2.5-VL and its M-RoPE plumbing (zspa_vllm/models/qwen2_5_vl.py, qwen.py, zspa_vllm/mrope.py)
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.embed_multimodal": "(self, **kwargs: object) -> list[torch.Tensor] | torch.Tensor | tuple[torch.Tensor, ...]",
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions": "(self, input_tokens: list[int], mm_features: list[vllm.multimodal.inputs.MultiModalFeatureSpec]) -> tuple[torch.Tensor, int]",
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.recompute_mrope_positions": "(self, input_ids: list[int] | torch.Tensor, multimodal_embeddings: collections.abc.Sequence[torch.Tensor], mrope_positions: torch.LongTensor, num_computed_tokens: int) -> tuple[collections.abc.Sequence[torch.Tensor], torch.Tensor, int]",
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.get_encoder_cudagraph_config": "(self)",
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLProcessingInfo.get_hf_processor": "(self, **kwargs: object) -> transformers.models.qwen2_5_vl.processing_qwen2_5_vl.Qwen2_5_VLProcessor",
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLMultiModalProcessor._get_prompt_updates": "(self, mm_items: vllm.multimodal.parse.MultiModalDataItems, hf_processor_mm_kwargs: collections.abc.Mapping[str, typing.Any], out_mm_kwargs: vllm.multimodal.inputs.MultiModalKwargsItems) -> collections.abc.Sequence[vllm.multimodal.processing.processor.PromptUpdate]",
    # Qwen3-VL / Qwen3-VL-MoE (zspa_vllm/models/qwen3_vl.py, qwen3_vl_moe.py, qwen.py): deepstack columns
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.embed_multimodal": "(self, **kwargs: object) -> list[torch.Tensor] | torch.Tensor | tuple[torch.Tensor, ...] | None",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.get_mrope_input_positions": "(self, input_tokens: list[int], mm_features: list[vllm.multimodal.inputs.MultiModalFeatureSpec]) -> tuple[torch.Tensor, int]",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.recompute_mrope_positions": "(self, input_ids: list[int] | torch.Tensor, multimodal_embeddings: collections.abc.Sequence[torch.Tensor], mrope_positions: torch.LongTensor, num_computed_tokens: int) -> tuple[collections.abc.Sequence[torch.Tensor], torch.Tensor, int]",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.get_encoder_cudagraph_config": "(self)",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration._compute_deepstack_embeds": "(self, inputs_embeds: torch.Tensor, multimodal_embeddings: list[torch.Tensor] | torch.Tensor | tuple[torch.Tensor, ...], is_multimodal: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | torch.Tensor | tuple[torch.Tensor, ...]]",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLProcessingInfo.get_hf_processor": "(self, **kwargs: object) -> transformers.models.qwen3_vl.processing_qwen3_vl.Qwen3VLProcessor",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor._get_prompt_updates": "(self, mm_items: vllm.multimodal.parse.MultiModalDataItems, hf_processor_mm_kwargs: collections.abc.Mapping[str, typing.Any], out_mm_kwargs: vllm.multimodal.inputs.MultiModalKwargsItems) -> collections.abc.Sequence[vllm.multimodal.processing.processor.PromptUpdate]",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor._apply_hf_processor_main": "(self, mm_items: vllm.multimodal.parse.MultiModalDataItems, hf_kwargs: collections.abc.Mapping[str, object]) -> transformers.feature_extraction_utils.BatchFeature",
    # videos (zspa_vllm/models/qwen.py, qwen3_vl.py): vLLM's video count for the usage
    # report; Qwen3-VL's per-step layout and its own position rule on the unpruned layout
    "vllm.model_executor.models.qwen2_vl:Qwen2VLProcessingInfo.get_num_video_tokens": "(self, *, image_width: int, image_height: int, num_frames: int, image_processor: transformers.models.qwen2_vl.image_processing_qwen2_vl.Qwen2VLImageProcessor, mm_kwargs: collections.abc.Mapping[str, object]) -> int",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor.get_video_repl": "(*, tokens_per_frame: list[int], timestamps: collections.abc.Sequence[float] | torch.Tensor, tokenizer: vllm.tokenizers.protocol.TokenizerLike, vision_start_token_id: int, vision_end_token_id: int, video_token_id: int, select_token_id: bool = False) -> vllm.multimodal.processing.processor.PromptUpdateDetails",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration._get_mrope_input_positions": "(input_tokens: list[int], mm_features: list[vllm.multimodal.inputs.MultiModalFeatureSpec], config: transformers.models.qwen3_vl.configuration_qwen3_vl.Qwen3VLConfig)",
    # Qwen3.5 / Qwen3.5-MoE (zspa_vllm/models/qwen3_5.py, qwen3_5_moe.py): merges the rows
    # recompute_mrope_positions left at the LLM width, no deepstack split
    "vllm.model_executor.models.qwen3_5:Qwen3_5ForConditionalGeneration.embed_input_ids": "(self, input_ids: torch.Tensor, multimodal_embeddings: list[torch.Tensor] | torch.Tensor | tuple[torch.Tensor, ...] | None = None, *, is_multimodal: torch.Tensor | None = None) -> torch.Tensor",
    "vllm.model_executor.models.qwen3_5:Qwen3_5ProcessingInfo.get_hf_config": "(self)",
    "vllm.model_executor.models.qwen3_5:Qwen3_5MoeProcessingInfo.get_hf_config": "(self)",
    "vllm.multimodal.processing.context:BaseProcessingInfo._merge_and_resolve_mm_processor_kwargs": "(self, mm_kwargs: collections.abc.Mapping[str, object]) -> dict[str, typing.Any]",
    "vllm.model_executor.models.qwen2_vl:Qwen2VLProcessingInfo._merge_and_resolve_mm_processor_kwargs": "(self, mm_kwargs: collections.abc.Mapping[str, object]) -> dict[str, typing.Any]",
    # runner hooks that make the runners call recompute_mrope_positions for images
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner._gather_mm_embeddings": "(self, scheduler_output: 'SchedulerOutput', shift_computed_tokens: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]",
    "vllm.v1.worker.gpu.model_states.mm_pruning:maybe_create_mm_pruner": "(model_config: vllm.config.model.ModelConfig, model: torch.nn.modules.module.Module, rope_state: vllm.v1.worker.gpu.mm.rope.RopeState | None, encoder_cache: vllm.v1.worker.gpu.mm.encoder_cache.EncoderCache | None) -> vllm.v1.worker.gpu.model_states.mm_pruning.MultiModalPruner | None",
    # the scheduler charging unpruned encoder work (zspa_vllm/encoder_budget.py)
    "vllm.v1.core.sched.scheduler:Scheduler._try_schedule_encoder_inputs": "(self, request: vllm.v1.request.Request, num_computed_tokens: int, num_new_tokens: int, encoder_compute_budget: int, shift_computed_tokens: int = 0) -> tuple[list[int], int, int, list[int], list[int]]",
    "vllm.v1.core.sched.async_scheduler:AsyncScheduler._try_schedule_encoder_inputs": "(self, request: vllm.v1.request.Request, num_computed_tokens: int, num_new_tokens: int, encoder_compute_budget: int, shift_computed_tokens: int = 0) -> tuple[list[int], int, int, list[int], list[int]]",
    "vllm.v1.worker.gpu.model_states.mm_pruning:MultiModalPruner.__init__": "(self, model: torch.nn.modules.module.Module, rope_state: vllm.v1.worker.gpu.mm.rope.RopeState, encoder_cache: vllm.v1.worker.gpu.mm.encoder_cache.EncoderCache, inputs_embeds_size: int) -> None",
}

# dataclass fields the processor reads or replaces
FIELDS = {
    "vllm.multimodal.processing.inputs:ProcessorInputs": ["prompt", "mm_data_items", "mm_uuid_items", "hf_processor_mm_kwargs", "media_io_kwargs", "cache"],
    # the scheduler reads an item's identity (tagged with its unpruned count) and position
    "vllm.multimodal.inputs:MultiModalFeatureSpec": ["data", "modality", "identifier", "mm_position", "mm_hash"],
    "vllm.multimodal.inputs:PlaceholderRange": ["offset", "length", "is_embed"],
    # a family's replacement, rebuilt with a shorter run (zspa_vllm/one_run.py)
    "vllm.multimodal.processing.processor:PromptUpdateDetails": ["full", "is_embed"],
    "vllm.multimodal.processing.processor:PromptReplacement": ["modality", "target", "replacement"],
}


def _resolve(path: str):
    import importlib

    module, _, attr = path.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("path", sorted(HOOKS))
def test_hook_signature_is_the_one_we_override(path):
    assert str(inspect.signature(_resolve(path))) == HOOKS[path], (
        f"vLLM changed {path}; review the zspa override before upgrading"
    )


@pytest.mark.parametrize("path", sorted(FIELDS))
def test_dataclass_fields(path):
    assert [f.name for f in dataclasses.fields(_resolve(path))] == FIELDS[path]


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


def test_qwen3_deepstack_layout_the_selection_relies_on():
    """zspa_vllm.models.qwen.Qwen3PruningModelMixin: an image row is [main | deepstack
    levels], split by vLLM at visual_dim; the selection reads the main columns only."""
    from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration, Qwen3_VisionTransformer

    assert "[self.visual_dim, self.multiscale_dim]" in inspect.getsource(
        Qwen3VLForConditionalGeneration._compute_deepstack_embeds
    )
    assert "torch.cat(\n            [hidden_states] + deepstack_feature_lists, dim=1" in inspect.getsource(
        Qwen3_VisionTransformer.forward
    )


def test_qwen3_5_is_qwen3_vl_on_the_vision_side():
    """zspa_vllm.models.qwen3_5 / qwen3_5_moe say only that they are Qwen3.5: the image
    encoding, the M-RoPE position rule and the processor they prune are Qwen3-VL's own,
    and their vision tower has no DeepStack levels (rows are the LLM inputs)."""
    from vllm.model_executor.models import qwen3_5, qwen3_vl

    for cls in (qwen3_5.Qwen3_5ForConditionalGeneration, qwen3_5.Qwen3_5MoeForConditionalGeneration):
        for name in ("embed_multimodal", "get_mrope_input_positions", "recompute_mrope_positions", "_process_image_input"):
            assert getattr(cls, name) is getattr(qwen3_vl.Qwen3VLForConditionalGeneration, name), (cls, name)
        assert 'hasattr(config.vision_config, "deepstack_visual_indexes")' in inspect.getsource(cls.__init__)
        assert cls.__dict__["_processor_factory"].processor is qwen3_vl.Qwen3VLMultiModalProcessor


def test_runner_internals_the_mrope_hooks_rely_on():
    """zspa_vllm.runner_hooks.install_runner_hooks: the CPU runner must inherit the
    GPU runner's _gather_mm_embeddings (which we wrap), and that method must still gate
    recompute_mrope_positions on is_multimodal_pruning_enabled."""
    from vllm.v1.worker import gpu_model_runner
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    assert issubclass(CPUModelRunner, gpu_model_runner.GPUModelRunner)
    assert "_gather_mm_embeddings" not in CPUModelRunner.__dict__
    # unwrap: engine tests in this process may have installed our wrapper already
    source = inspect.getsource(inspect.unwrap(gpu_model_runner.GPUModelRunner._gather_mm_embeddings))
    assert "self.is_multimodal_pruning_enabled and self.uses_mrope" in source
    assert "self.model.recompute_mrope_positions(" in source


def test_mrv2_internals_the_pruner_hook_relies_on():
    """zspa_vllm.runner_hooks, Model Runner V2 side: vLLM's CPU runner is MRv2's GPU
    runner; the default model state binds maybe_create_mm_pruner by name at import (so
    the hook replaces it in both modules) and creates the pruner only for EVS; the pruner
    recomputes positions through the model and strip() cuts rows to the width it is given
    (ours keeps Qwen3-VL's deepstack columns)."""
    from vllm.v1.worker.cpu.model_runner import CPUModelRunner
    from vllm.v1.worker.gpu import model_runner
    from vllm.v1.worker.gpu.model_states import default, mm_pruning

    assert issubclass(CPUModelRunner, model_runner.GPUModelRunner)
    default_source = inspect.getsource(default)
    assert "from vllm.v1.worker.gpu.model_states.mm_pruning import maybe_create_mm_pruner" in default_source
    assert "self.mm_pruner = maybe_create_mm_pruner(" in default_source
    assert "mm_embeds = self.mm_pruner.recompute(mm_embeds, input_batch, req_states)" in default_source
    create = inspect.getsource(inspect.unwrap(mm_pruning.maybe_create_mm_pruner))
    assert "not model_config.multimodal_config.is_multimodal_pruning_enabled()" in create
    pruner = inspect.getsource(mm_pruning.MultiModalPruner)
    assert "self.model.recompute_mrope_positions(" in pruner
    assert "mm[:, : self.inputs_embeds_size]" in pruner
    assert "self.rope_state.update_prefill_positions(req_idx, new_positions, delta)" in pruner


def test_config_hooks_map_still_exists():
    """zspa_vllm.config_checks puts its refusals into this per-architecture map, which
    VllmConfig consults while it is built."""
    import inspect as _inspect

    from vllm.config.vllm import VllmConfig
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    assert isinstance(MODELS_CONFIG_MAP, dict)
    assert "MODELS_CONFIG_MAP.get(architecture" in _inspect.getsource(VllmConfig.try_verify_and_update_config)


def test_scheduler_config_still_has_the_encoder_budget():
    """zspa_vllm.model sizes its vision-encoder groups by this field."""
    from vllm.config import SchedulerConfig

    assert "max_num_encoder_input_tokens" in SchedulerConfig.__dataclass_fields__


def test_scheduler_choice_our_factory_mirrors():
    """zspa_vllm.encoder_budget.scheduler builds, charging unpruned tokens, the class vLLM
    picks when no scheduler class is named; EngineCore calls what scheduler_cls resolves
    to with keywords only, and the scheduler sizes each step's encoder work by
    max_num_encoder_input_tokens."""
    from vllm.config import SchedulerConfig
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.engine.core import EngineCore

    for async_scheduling, expected in ((True, AsyncScheduler), (False, Scheduler)):
        config = SchedulerConfig(max_model_len=64, is_encoder_decoder=False, async_scheduling=async_scheduling)
        assert config.get_scheduler_cls() is expected
    config = SchedulerConfig(max_model_len=64, is_encoder_decoder=False, scheduler_cls="zspa_vllm.encoder_budget.scheduler")
    from zspa_vllm import encoder_budget

    assert config.get_scheduler_cls() is encoder_budget.scheduler
    source = inspect.getsource(EngineCore.__init__)
    assert "Scheduler = vllm_config.scheduler_config.get_scheduler_cls()" in source
    assert "self.scheduler: SchedulerInterface = Scheduler(\n            vllm_config=vllm_config," in source
    assert "encoder_compute_budget = self.max_num_encoder_input_tokens" in inspect.getsource(Scheduler.schedule)


def test_bidirectional_image_blocks_follow_the_placeholder_embed_range():
    """Gemma 3 (zspa_vllm/models/gemma3.py): vLLM's GPU runners build an image's
    bidirectional attention block from its placeholder's embed range, so a shortened run
    is a shortened block; the CPU backend builds none (images attend causally there,
    stock vLLM included)."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    source = inspect.getsource(GPUModelRunner)
    assert "img_doc_range = pos_info.extract_embeds_range()" in source
    assert "pos_info = mm_feature.mm_position" in source
    assert CPUAttentionBackend.supports_mm_prefix() is False
