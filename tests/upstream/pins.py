"""What the plugin relies on inside vLLM, pinned per supported release.

Checked by tests/unit/test_upstream_sources.py on each release's own sources (read, not
imported: tests/upstream/sources.py), so a release we cannot install here (the CUDA-only
0.33 and 0.34) is pinned as strictly as the installed one. ``make check-upstream
VLLM=X.Y.Z`` checks a new release against the newest pins. A change of a pin means: re-read
the upstream code where the comment points, adapt the plugin (a version difference goes
into one table of zspa_vllm/vllm_versions.py), then pin the release here. Every pinned
place is an entry of zspa_vllm/vllm_touch_points.py (what, how, why, where; a test checks).
"""

from __future__ import annotations

import os

# the release whose sources stand for each supported series
RELEASES = {"0.32": "0.32.0", "0.33": "0.33.0", "0.34": "0.34.0"}
RELEASE_ENV = "ZSPA_UPSTREAM_VLLM"  # make check-upstream VLLM=X.Y.Z

# Signatures as written in the source ("module:Qualified.name" -> "(args) -> returns");
# None: absent in that release (and the plugin must not need it there).
SIGNATURES: dict[str, dict[str, str | None]] = {}
SIGNATURES["0.32"] = {
    # processor side (zspa_vllm/frontend/processor.py)
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor.apply": "(self, inputs: ProcessorInputs, timing_ctx: TimingContext) -> MultiModalInput",
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor._apply_hf_processor_main": "(self, mm_items: MultiModalDataItems, hf_kwargs: Mapping[str, object]) -> BatchFeature",
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_mm_fields_config": "(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]) -> Mapping[str, MultiModalFieldConfig]",
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_prompt_updates": "(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object], out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]",
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor.__init__": "(self, info: _I, dummy_inputs: 'BaseDummyInputsBuilder[_I]') -> None",
    "vllm.multimodal.processing.inputs:ProcessorInputs.get_mm_hashes": "(self, model_id: str, hash_algorithm: MMHasherAlgorithm) -> MultiModalHashes",
    "vllm.multimodal.registry:MultiModalRegistry.register_processor": "(self, processor: MultiModalProcessorFactory[_I], *, info: ProcessingInfoFactory[_I], dummy_inputs: DummyInputsBuilderFactory[_I])",
    "vllm.multimodal.inputs:MultiModalFieldConfig.batched": "(modality: str, *, keep_on_cpu: bool=False)",
    # per-item identities, cache-missing items, fields for embeddings too (zspa_vllm/frontend/processor.py)
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_mm_hashes": "(self, inputs: ProcessorInputs) -> MultiModalHashes",
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_cache_missing_processor_kwargs": "(self, inputs: ProcessorInputs, mm_is_cached: MultiModalIsCached) -> Mapping[str, object]",
    "vllm.multimodal.parse:EmbeddingItems.get_feature_size": "(self, item_idx: int) -> int",
    "vllm.multimodal.hasher:MultiModalHasher.hash_kwargs": "(cls, algorithm: MMHasherAlgorithm, /, **kwargs: object) -> str",
    "vllm.multimodal.inputs:PlaceholderRange.get_num_embeds": "(self) -> int",
    # start-up refusals (zspa_vllm/engine/config_checks.py)
    "vllm.model_executor.models.config:VerifyAndUpdateConfig.verify_and_update_config": "(vllm_config: 'VllmConfig') -> None",
    "vllm.model_executor.models.config:VerifyAndUpdateConfig.verify_and_update_model_config": "(model_config: 'ModelConfig') -> None",
    # the encoder-output cache's rank (zspa_vllm/worker/model.py)
    "vllm.distributed.parallel_state:get_tensor_model_parallel_rank": "() -> int",
    # one run of embed positions per item (zspa_vllm/frontend/one_run.py)
    "vllm.multimodal.processing.processor:PromptUpdateDetails.select_token_id": "(seq: list[int], embed_token_id: int) -> 'PromptUpdateDetails'",
    # model side (zspa_vllm/worker/model.py, zspa_vllm/models/llava.py)
    "vllm.model_executor.models.llava:LlavaForConditionalGeneration.embed_multimodal": "(self, **kwargs: object) -> MultiModalEmbeddings",
    "vllm.model_executor.models.llava:BaseLlavaMultiModalProcessor._get_prompt_updates": "(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object], out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]",
    "vllm.model_executor.models.llava:_build_llava_or_pixtral_hf_processor": "(info: _I, dummy_inputs: BaseDummyInputsBuilder[_I]) -> BaseMultiModalProcessor",
    "vllm.model_executor.models.llava:BaseLlavaProcessingInfo.get_num_image_tokens": "(self, *, image_width: int, image_height: int) -> int",
    # LLaVA-NeXT (zspa_vllm/models/llava_next.py)
    "vllm.model_executor.models.llava_next:LlavaNextForConditionalGeneration.embed_multimodal": "(self, **kwargs: object) -> MultiModalEmbeddings",
    "vllm.model_executor.models.llava_next:LlavaNextProcessingInfo.get_num_image_tokens": "(self, *, image_width: int, image_height: int) -> int",
    "vllm.model_executor.models.llava_next:LlavaNextMultiModalProcessor._get_prompt_updates": "(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object], out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]",
    # Qwen2-VL (zspa_vllm/models/qwen2_vl.py, qwen.py, zspa_vllm/worker/mrope.py)
    "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration.embed_multimodal": "(self, **kwargs: object) -> MultiModalEmbeddings",
    "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration.get_mrope_input_positions": "(self, input_tokens: list[int], mm_features: list[MultiModalFeatureSpec]) -> tuple[torch.Tensor, int]",
    "vllm.model_executor.models.qwen2_vl:Qwen2VLForConditionalGeneration.get_encoder_cudagraph_config": "(self)",
    "vllm.model_executor.models.qwen2_vl:Qwen2VLProcessingInfo.get_hf_processor": "(self, **kwargs: object) -> Qwen2VLProcessor",
    "vllm.model_executor.models.qwen2_vl:Qwen2VLMultiModalProcessor._get_prompt_updates": "(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, Any], out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]",
    # Qwen2.5-VL and its M-RoPE plumbing (zspa_vllm/models/qwen2_5_vl.py, qwen.py, zspa_vllm/worker/mrope.py)
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.embed_multimodal": "(self, **kwargs: object) -> MultiModalEmbeddings",
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions": "(self, input_tokens: list[int], mm_features: list[MultiModalFeatureSpec]) -> tuple[torch.Tensor, int]",
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.recompute_mrope_positions": "(self, input_ids: list[int] | torch.Tensor, multimodal_embeddings: Sequence[torch.Tensor], mrope_positions: torch.LongTensor, num_computed_tokens: int) -> tuple[Sequence[torch.Tensor], torch.Tensor, int]",
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.get_encoder_cudagraph_config": "(self)",
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLProcessingInfo.get_hf_processor": "(self, **kwargs: object) -> Qwen2_5_VLProcessor",
    "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLMultiModalProcessor._get_prompt_updates": "(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, Any], out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]",
    # Qwen3-VL / Qwen3-VL-MoE (zspa_vllm/models/qwen3_vl.py, qwen3_vl_moe.py, qwen.py): deepstack columns
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.embed_multimodal": "(self, **kwargs: object) -> MultiModalEmbeddings | None",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.get_mrope_input_positions": "(self, input_tokens: list[int], mm_features: list[MultiModalFeatureSpec]) -> tuple[torch.Tensor, int]",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.recompute_mrope_positions": "(self, input_ids: list[int] | torch.Tensor, multimodal_embeddings: Sequence[torch.Tensor], mrope_positions: torch.LongTensor, num_computed_tokens: int) -> tuple[Sequence[torch.Tensor], torch.Tensor, int]",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration.get_encoder_cudagraph_config": "(self)",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration._compute_deepstack_embeds": "(self, inputs_embeds: torch.Tensor, multimodal_embeddings: MultiModalEmbeddings, is_multimodal: torch.Tensor) -> tuple[torch.Tensor, MultiModalEmbeddings]",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLProcessingInfo.get_hf_processor": "(self, **kwargs: object) -> Qwen3VLProcessor",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor._get_prompt_updates": "(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, Any], out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor._apply_hf_processor_main": "(self, mm_items: MultiModalDataItems, hf_kwargs: Mapping[str, object]) -> BatchFeature",
    # videos (zspa_vllm/models/qwen.py, qwen3_vl.py): vLLM's video count for the usage
    # report; Qwen3-VL's per-step layout and its own position rule on the unpruned layout
    "vllm.model_executor.models.qwen2_vl:Qwen2VLProcessingInfo.get_num_video_tokens": "(self, *, image_width: int, image_height: int, num_frames: int, image_processor: Qwen2VLImageProcessor, mm_kwargs: Mapping[str, object]) -> int",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLMultiModalProcessor.get_video_repl": "(*, tokens_per_frame: list[int], timestamps: Sequence[float] | torch.Tensor, tokenizer: TokenizerLike, vision_start_token_id: int, vision_end_token_id: int, video_token_id: int, select_token_id: bool=False) -> PromptUpdateDetails",
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration._get_mrope_input_positions": "(input_tokens: list[int], mm_features: list[MultiModalFeatureSpec], config: Qwen3VLConfig)",
    # Qwen3.5 / Qwen3.5-MoE (zspa_vllm/models/qwen3_5.py, qwen3_5_moe.py): merges the rows
    # recompute_mrope_positions left at the LLM width, no deepstack split
    "vllm.model_executor.models.qwen3_5:Qwen3_5ForConditionalGeneration.embed_input_ids": "(self, input_ids: torch.Tensor, multimodal_embeddings: MultiModalEmbeddings | None=None, *, is_multimodal: torch.Tensor | None=None) -> torch.Tensor",
    "vllm.model_executor.models.qwen3_5:Qwen3_5ProcessingInfo.get_hf_config": "(self)",
    "vllm.model_executor.models.qwen3_5:Qwen3_5MoeProcessingInfo.get_hf_config": "(self)",
    "vllm.multimodal.processing.context:BaseProcessingInfo._merge_and_resolve_mm_processor_kwargs": "(self, mm_kwargs: Mapping[str, object]) -> dict[str, Any]",
    "vllm.model_executor.models.qwen2_vl:Qwen2VLProcessingInfo._merge_and_resolve_mm_processor_kwargs": "(self, mm_kwargs: Mapping[str, object]) -> dict[str, Any]",
    # runner hooks that make the runners call recompute_mrope_positions for images
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner._gather_mm_embeddings": "(self, scheduler_output: 'SchedulerOutput', shift_computed_tokens: int=0) -> tuple[list[torch.Tensor], torch.Tensor]",
    "vllm.v1.worker.gpu.model_states.mm_pruning:maybe_create_mm_pruner": "(model_config: ModelConfig, model: nn.Module, rope_state: RopeState | None, encoder_cache: EncoderCache | None) -> MultiModalPruner | None",
    # the scheduler charging unpruned encoder work (zspa_vllm/engine/encoder_budget.py)
    "vllm.v1.core.sched.scheduler:Scheduler._try_schedule_encoder_inputs": "(self, request: Request, num_computed_tokens: int, num_new_tokens: int, encoder_compute_budget: int, shift_computed_tokens: int=0) -> tuple[list[int], int, int, list[int], list[int]]",
    "vllm.v1.core.sched.async_scheduler:AsyncScheduler._try_schedule_encoder_inputs": "(self, request: Request, num_computed_tokens: int, num_new_tokens: int, encoder_compute_budget: int, shift_computed_tokens: int=0) -> tuple[list[int], int, int, list[int], list[int]]",
    "vllm.v1.worker.gpu.model_states.mm_pruning:MultiModalPruner.__init__": "(self, model: nn.Module, rope_state: RopeState, encoder_cache: EncoderCache, inputs_embeds_size: int) -> None",
    # overridden to pass steps with no pruned rows through (zspa_vllm/worker/runner_hooks.py)
    "vllm.v1.worker.gpu.model_states.mm_pruning:MultiModalPruner.recompute": "(self, mm_embeds: list[torch.Tensor], input_batch: InputBatch, req_states: RequestState) -> list[torch.Tensor]",
    # M-RoPE positions reach MRv2's RopeState from get_mrope_input_positions (a CPU tensor)
    "vllm.v1.worker.gpu.mm.rope:RopeState.init_prefill_positions": "(self, req_idx: int, model: nn.Module, prefill_token_ids: list[int], mm_features: list) -> None",
    # the serve CLI's building blocks (zspa_serve/cli.py through zspa_vllm.vllm_versions.LOCATIONS)
    "vllm.entrypoints.launchers.cli_args:make_arg_parser": "(parser: FlexibleArgumentParser) -> FlexibleArgumentParser",
    "vllm.entrypoints.serve.utils.api_utils:cli_env_setup": "()",
    # zspa_serve/media.py: the media connector zspa-serve names, on a guarded session
    "vllm.multimodal.media.connector:MediaConnector.load_from_url_async": "(self, url: str, media_io: MediaIO[_M], *, fetch_timeout: int | None=None) -> _M",
    "vllm.multimodal.media.connector:MediaConnector.load_from_url": "(self, url: str, media_io: MediaIO[_M], *, fetch_timeout: int | None=None) -> _M",
    "vllm.multimodal.media.connector:MediaConnector._load_file_url": "(self, url_spec: Url, media_io: MediaIO[_M]) -> _M",
    "vllm.multimodal.media.base:MediaIO.get_max_bytes": "(self) -> int | None",
    "vllm.connections:HTTPConnection.get_async_client": "(self) -> aiohttp.ClientSession",
    "vllm.exceptions:VLLMValidationError.__init__": "(self, message: str, *, parameter: str | None=None, value: Any=None) -> None",
}
SIGNATURES["0.33"] = {
    **SIGNATURES["0.32"],
    # moved to vllm.entrypoints.common (compat.LOCATIONS)
    "vllm.entrypoints.launchers.cli_args:make_arg_parser": None,
    "vllm.entrypoints.serve.utils.api_utils:cli_env_setup": None,
    "vllm.entrypoints.common.cli_args:make_arg_parser": "(parser: FlexibleArgumentParser) -> FlexibleArgumentParser",
    "vllm.entrypoints.common.startup:cli_env_setup": "()",
}
SIGNATURES["0.34"] = {
    **SIGNATURES["0.33"],
    # the V1 runners are gone: Model Runner V2 only (runner_hooks skips the V1 hook)
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner._gather_mm_embeddings": None,
    # Qwen3.5 registered to vllm.models.qwen3_5 (its CUDA implementation on CUDA)
    "vllm.models.qwen3_5:Qwen3_5ForConditionalGeneration.embed_input_ids": "(self, input_ids: torch.Tensor, multimodal_embeddings: MultiModalEmbeddings | None=None, *, is_multimodal: torch.Tensor | None=None) -> torch.Tensor",
    # the non-x86 CPU runner's own pruner (compat.PRUNER_FACTORIES)
    "vllm.v1.worker.cpu.mm_pruning:maybe_create_mm_pruner": "(model_config: ModelConfig, model: nn.Module, rope_state: RopeState | None, encoder_cache: EncoderCache | None) -> MultiModalPruner | None",
    "vllm.v1.worker.cpu.mm_pruning:MultiModalPruner.__init__": "(self, model: nn.Module, rope_state: RopeState, encoder_cache: EncoderCache, inputs_embeds_size: int) -> None",
    "vllm.v1.worker.cpu.mm_pruning:MultiModalPruner.recompute": "(self, mm_embeds: list[torch.Tensor], input_batch: InputBatch, req_states: CPURequestState) -> list[torch.Tensor]",
}

# Source text the plugin's reasoning depends on ("module[:Qualified.name]" -> snippets,
# compared with whitespace collapsed); a path mapped to () must be absent.
_MRV2_RUNS_OUR_PRUNER = {
    # the default model state binds maybe_create_mm_pruner by name at import (so the hook
    # replaces it in both modules) and runs the pruner on every step's media rows
    "vllm.v1.worker.gpu.model_states.default": (
        "from vllm.v1.worker.gpu.model_states.mm_pruning import maybe_create_mm_pruner",
        "self.mm_pruner = maybe_create_mm_pruner(",
        "mm_embeds = self.mm_pruner.recompute(mm_embeds, input_batch, req_states)",
    ),
    # stock creates the pruner only for EVS; the pruner recomputes positions through the
    # model and cuts rows to the width it is given (ours keeps Qwen3-VL's deepstack columns)
    "vllm.v1.worker.gpu.model_states.mm_pruning:maybe_create_mm_pruner": (
        "not model_config.multimodal_config.is_multimodal_pruning_enabled()",
    ),
    "vllm.v1.worker.gpu.model_states.mm_pruning:MultiModalPruner": (
        "self.model.recompute_mrope_positions(",
        "mm[:, : self.inputs_embeds_size]",  # (our subclass compares widths with it)
        "self.rope_state.update_prefill_positions(req_idx, new_positions, delta)",
    ),
}
SNIPPETS: dict[str, dict[str, tuple[str, ...]]] = {}
SNIPPETS["0.32"] = {
    **_MRV2_RUNS_OUR_PRUNER,
    # Qwen3-VL (zspa_vllm/models/qwen.py): an image row is [main | deepstack levels], split
    # by vLLM at visual_dim; the selection reads the main columns only
    "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration._compute_deepstack_embeds": (
        "[self.visual_dim, self.multiscale_dim]",
    ),
    "vllm.model_executor.models.qwen3_vl:Qwen3_VisionTransformer.forward": (
        "torch.cat([hidden_states] + deepstack_feature_lists, dim=1",
    ),
    # Qwen3.5's vision tower has no DeepStack levels: its rows are the LLM inputs
    "vllm.model_executor.models.qwen3_5:Qwen3_5ForConditionalGeneration.__init__": (
        'hasattr(config.vision_config, "deepstack_visual_indexes")',
    ),
    # V1 runners gate recompute_mrope_positions on is_multimodal_pruning_enabled (runner_hooks)
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner._gather_mm_embeddings": (
        "self.is_multimodal_pruning_enabled and self.uses_mrope",
        "self.model.recompute_mrope_positions(",
    ),
    # Gemma 3 (zspa_vllm/models/gemma3.py): an image's bidirectional attention block is its
    # placeholder's embed range, so a shortened run is a shortened block
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner": (
        "pos_info = mm_feature.mm_position",
        "img_doc_range = pos_info.extract_embeds_range()",
    ),
    # zspa_vllm.engine.config_checks puts its refusals into this per-architecture map
    "vllm.config.vllm:VllmConfig.try_verify_and_update_config": ("MODELS_CONFIG_MAP.get(architecture",),
    # zspa_vllm.engine.encoder_budget: EngineCore builds what scheduler_cls resolves to, with
    # keywords only; each step's encoder work is sized by max_num_encoder_input_tokens
    "vllm.v1.engine.core:EngineCore.__init__": (
        "Scheduler = vllm_config.scheduler_config.get_scheduler_cls()",
        "self.scheduler: SchedulerInterface = Scheduler( vllm_config=vllm_config,",
    ),
    "vllm.v1.core.sched.scheduler:Scheduler.schedule": ("encoder_compute_budget = self.max_num_encoder_input_tokens",),
    # the over-budget branch encoder_budget.tokens_before_item mirrors (with drafter shift)
    "vllm.v1.core.sched.scheduler:Scheduler._try_schedule_encoder_inputs": (
        "if num_computed_tokens + shift_computed_tokens < start_pos:",
        "num_new_tokens = start_pos - ( num_computed_tokens + shift_computed_tokens )",
    ),
    # MRv2 reads our positions with .tolist() (a tensor or anything indexable per channel)
    "vllm.v1.worker.gpu.mm.rope:RopeState.init_prefill_positions": ("pos = prefill_positions[i].tolist()",),
    # zspa_serve/media.py: chat media load through the connector VLLM_MEDIA_CONNECTOR names, which
    # fetches with its connection; that connection keeps one session; vLLM bounds decoded
    # pixels; a VLLMValidationError is a 400 naming its parameter
    "vllm.renderers.chat_utils": ("MEDIA_CONNECTOR_REGISTRY.load( envs.VLLM_MEDIA_CONNECTOR,",),
    "vllm.multimodal.media.connector:MediaConnector.load_from_url_async": (
        "connection = self.connection",
        "self._load_file_url, url_spec, media_io",
    ),
    "vllm.connections:HTTPConnection.get_async_client": ("if self._async_client is None or not self.reuse_client:",),
    "vllm.multimodal.media.image:ImageMediaIO.load_bytes": ("max_pixels = envs.VLLM_MAX_IMAGE_PIXELS",),
    "vllm.entrypoints.serve.exception_handling.error_response:create_error_response": (
        "isinstance(exc, VLLMValidationError)",
        "status_code = HTTPStatus.BAD_REQUEST param = exc.parameter",
    ),
    # a dense model's DP engines are independent: each resets data_parallel_rank to 0 (the
    # rank stays in data_parallel_index, which zspa_vllm.worker.model reads)
    "vllm.config.parallel:ParallelConfig.reconfigure_for_independent_dp_rank": ("self.data_parallel_rank = 0",),
    # zspa_serve/metrics.py: with several API servers /metrics is a new registry over the
    # multiprocess files, mounted as a route; ours goes ahead of it with the workers' series
    "vllm.v1.metrics.prometheus:get_prometheus_registry": (
        'if os.getenv("PROMETHEUS_MULTIPROC_DIR") is not None:',
        "registry = CollectorRegistry() multiprocess.MultiProcessCollector(registry) return registry",
    ),
    "vllm.entrypoints.serve.instrumentator.metrics:attach_router": (
        'metrics_route = Mount("/metrics", make_asgi_app(registry=registry))',
    ),
}
SNIPPETS["0.33"] = {
    **SNIPPETS["0.32"],
    # the over-budget branch lost its drafter shift (compat.ROLLBACK_KEEPS_DRAFTER_SHIFT)
    "vllm.v1.core.sched.scheduler:Scheduler._try_schedule_encoder_inputs": (
        "if num_computed_tokens < start_pos:",
        "num_new_tokens = min( num_new_tokens, start_pos - num_computed_tokens )",
    ),
    # Gemma 3's bidirectional ranges moved into one helper every runner calls
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner": ("compute_mm_prefix_ranges(",),
    "vllm.v1.attention.backends.utils:compute_mm_prefix_ranges": (
        "pos_info = mm_feature.mm_position",
        "feature_ranges = pos_info.extract_embeds_range()",
    ),
    "vllm.v1.worker.gpu.model_states.default:DefaultModelState": ("compute_mm_prefix_ranges(",),
    # chat_utils became a package: the connector is loaded in its content parser
    "vllm.renderers.chat_utils.content_parser": ("MEDIA_CONNECTOR_REGISTRY.load( envs.VLLM_MEDIA_CONNECTOR,",),
}
del SNIPPETS["0.33"]["vllm.renderers.chat_utils"]
SNIPPETS["0.34"] = {
    **SNIPPETS["0.33"],
    # no V1 runners
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner._gather_mm_embeddings": (),
    "vllm.v1.worker.gpu_model_runner:GPUModelRunner": (),
    # a prompt that must be prefilled whole is requeued when encoder inputs would cut it
    # (compat.REQUEUES_CUT_WHOLE_PROMPTS)
    "vllm.v1.core.sched.scheduler:Scheduler.schedule": (
        "encoder_compute_budget = self.max_num_encoder_input_tokens",
        "and not self.scheduler_config.enable_chunked_prefill",
        "Encoder cache pressure must not split a prompt",
        "skip_request(request_queue)",
    ),
    # .numpy() now: get_mrope_input_positions must return a CPU tensor (ours does)
    "vllm.v1.worker.gpu.mm.rope:RopeState.init_prefill_positions": ("pos = prefill_positions[i].numpy()",),
    # the CUDA Qwen3.5 has no DeepStack either
    "vllm.models.qwen3_5:Qwen3_5ForConditionalGeneration.__init__": (
        'hasattr(config.vision_config, "deepstack_visual_indexes")',
    ),
    # the standalone (non-x86) CPU runner: the same pruner, bound by name, positions
    # recomputed through the model (which also strips our columns: the width is unused)
    "vllm.v1.worker.cpu.model_states.default": (
        "from vllm.v1.worker.cpu.mm_pruning import maybe_create_mm_pruner",
        "self.mm_pruner = maybe_create_mm_pruner(",
        "mm_embeds = self.mm_pruner.recompute(",
    ),
    "vllm.v1.worker.cpu.mm_pruning:maybe_create_mm_pruner": (
        "not model_config.multimodal_config.is_multimodal_pruning_enabled()",
    ),
    "vllm.v1.worker.cpu.mm_pruning:MultiModalPruner": (
        "self.inputs_embeds_size = inputs_embeds_size",  # what our subclass compares widths with
        "self.model.recompute_mrope_positions(",
        "for src, dst in zip(req_embeds, req_cleaned)",
        "self.rope_state.update_prefill_positions(req_idx, new_positions, delta)",
    ),
}

# dataclass fields the plugin reads or replaces, in order
FIELDS = {
    "vllm.multimodal.processing.inputs:ProcessorInputs": ["prompt", "mm_data_items", "mm_uuid_items", "hf_processor_mm_kwargs", "media_io_kwargs", "cache"],
    # the scheduler reads an item's identity (tagged with its unpruned count) and position
    "vllm.multimodal.inputs:MultiModalFeatureSpec": ["data", "modality", "identifier", "mm_position", "mm_hash"],
    "vllm.multimodal.inputs:PlaceholderRange": ["offset", "length", "is_embed"],
    # a family's replacement, rebuilt with a shorter run (zspa_vllm/frontend/one_run.py)
    "vllm.multimodal.processing.processor:PromptUpdateDetails": ["full", "is_embed"],
    "vllm.multimodal.processing.processor:PromptReplacement": ["modality", "target", "replacement"],
}
# fields that must exist (zspa_vllm.worker.model sizes its vision-encoder groups by the first;
# zspa_vllm.engine.encoder_budget reads the second)
HAS_FIELDS = {"vllm.config.scheduler:SchedulerConfig": ["max_num_encoder_input_tokens", "enable_chunked_prefill"],
              # zspa_vllm.worker.model labels a worker's counters with its engine's DP index
              "vllm.config.parallel:ParallelConfig": ["data_parallel_index"]}


def releases_to_check() -> list[tuple[str, str]]:
    """(series whose pins apply, release whose sources are read): every supported one, or
    the release ``ZSPA_UPSTREAM_VLLM`` names against its series' pins (else the newest)."""
    release = os.environ.get(RELEASE_ENV)
    if not release:
        return list(RELEASES.items())
    series = ".".join(release.split(".")[:2])
    return [(series if series in RELEASES else max(RELEASES, key=lambda s: tuple(map(int, s.split(".")))), release)]
