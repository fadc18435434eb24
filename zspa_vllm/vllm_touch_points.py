"""Every place the plugin touches vLLM's internals: what, how, why, in which releases.

Each entry names vLLM's code as ``module:Qualified.name`` (or a module), how we use it
(subclassed, overridden, wrapped, replaced in a registry, read, called), where in our
code, why, and the upstream issue where there is one. ``targets`` are the exact places
the per-release pins in ``tests/upstream/pins.py`` check (signatures, source snippets,
dataclass fields), read from each release's own sources by
``tests/unit/test_upstream_sources.py``, which takes its list from here and fails when a
pin is not catalogued or an entry is not pinned. A difference between releases lives in
``zspa_vllm/vllm_versions.py``; an entry whose target moved lists each location.

Pure data: importing it imports no vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass

SUBCLASSED = "subclassed"  # our class derives from it (a family override, a mixin's base)
OVERRIDDEN = "overridden"  # a method our subclass replaces, calling or mirroring vLLM's
WRAPPED = "wrapped"  # replaced at run time by a function that calls the original
REGISTERED = "registered"  # we add or replace an entry of a vLLM registry or table
READ = "read"  # we rely on what its code does or holds, without changing it
CALLED = "called"  # we call it


@dataclass(frozen=True)
class TouchPoint:
    name: str
    how: str
    where: str  # our module(s)
    why: str
    targets: tuple[str, ...]  # what the pins check, as named in the releases that have it
    releases: str = "0.32-0.34"
    upstream: str = ""  # an upstream issue or PR, where one applies
    checked_by: str = ""  # a runtime test, for a touch point the source pins cannot see


_PROC = "vllm.multimodal.processing.processor"
_MODELS = "vllm.model_executor.models"

TOUCH_POINTS: tuple[TouchPoint, ...] = (
    # --- API-server process: the multimodal processor ---
    TouchPoint(
        "processor hooks", OVERRIDDEN, "zspa_vllm/frontend/processor.py",
        "read the knobs from mm_processor_kwargs, replace them by one plan kwarg, write per-item fields, "
        "and shorten each pruned item's placeholder run",
        (f"{_PROC}:BaseMultiModalProcessor.apply", f"{_PROC}:BaseMultiModalProcessor._apply_hf_processor_main",
         f"{_PROC}:BaseMultiModalProcessor._get_mm_fields_config", f"{_PROC}:BaseMultiModalProcessor._get_prompt_updates",
         f"{_PROC}:BaseMultiModalProcessor.__init__", "vllm.multimodal.inputs:MultiModalFieldConfig.batched",
         "vllm.multimodal.processing.inputs:ProcessorInputs"),
    ),
    TouchPoint(
        "item identities", OVERRIDDEN, "zspa_vllm/frontend/processor.py",
        "a pruned item's cache identity is vLLM's hash plus its own selection key (and its unpruned count for "
        "the scheduler); items seen before are not reprocessed; precomputed embeddings get fields too",
        (f"{_PROC}:BaseMultiModalProcessor._get_mm_hashes", f"{_PROC}:BaseMultiModalProcessor._get_cache_missing_processor_kwargs",
         "vllm.multimodal.processing.inputs:ProcessorInputs.get_mm_hashes", "vllm.multimodal.hasher:MultiModalHasher.hash_kwargs",
         "vllm.multimodal.parse:EmbeddingItems.get_feature_size", "vllm.multimodal.inputs:PlaceholderRange.get_num_embeds",
         "vllm.multimodal.inputs:PlaceholderRange"),
        upstream="vllm#46747: vLLM's processor cache can drift between the front end and the engine core under "
        "load (a 500, stock vLLM too)",
        checked_by="tests/unit/test_upstream_hooks.py::test_hash_factors_still_include_processor_kwargs",
    ),
    TouchPoint(
        "processor registration", REGISTERED, "zspa_vllm/models/*.py",
        "each family's model class registers its pruning processor the way vLLM's own classes do",
        ("vllm.multimodal.registry:MultiModalRegistry.register_processor",),
    ),
    TouchPoint(
        "one run of embed positions", READ, "zspa_vllm/frontend/one_run.py",
        "a family whose image is one run of embed tokens gets vLLM's replacement rebuilt with a shorter run",
        (f"{_PROC}:PromptUpdateDetails.select_token_id", f"{_PROC}:PromptUpdateDetails", f"{_PROC}:PromptReplacement"),
    ),
    # --- engine-core process ---
    TouchPoint(
        "start-up refusals", REGISTERED, "zspa_vllm/engine/config_checks.py",
        "settings that would put pruned tokens at wrong positions are refused when vLLM builds its config; our "
        "entry in MODELS_CONFIG_MAP calls vLLM's own",
        ("vllm.model_executor.models.config:VerifyAndUpdateConfig.verify_and_update_config",
         "vllm.model_executor.models.config:VerifyAndUpdateConfig.verify_and_update_model_config",
         "vllm.config.vllm:VllmConfig.try_verify_and_update_config"),
        checked_by="tests/unit/test_upstream_hooks.py::test_config_hooks_map_is_a_dict",
    ),
    TouchPoint(
        "scheduler charging unpruned encoder work", SUBCLASSED, "zspa_vllm/engine/encoder_budget.py",
        "the encoder runs on every patch, so a pruned item is charged its unpruned token count; the over-budget "
        "branch mirrors each release's own",
        ("vllm.v1.core.sched.scheduler:Scheduler._try_schedule_encoder_inputs",
         "vllm.v1.core.sched.async_scheduler:AsyncScheduler._try_schedule_encoder_inputs",
         "vllm.v1.core.sched.scheduler:Scheduler.schedule", "vllm.v1.engine.core:EngineCore.__init__",
         "vllm.config.scheduler:SchedulerConfig", "vllm.multimodal.inputs:MultiModalFeatureSpec"),
        checked_by="tests/unit/test_upstream_hooks.py::test_scheduler_choice_our_factory_mirrors",
    ),
    # --- worker processes ---
    TouchPoint(
        "model: encode, select, hand on the kept rows", OVERRIDDEN, "zspa_vllm/worker/model.py, zspa_vllm/models/*.py",
        "each family's embed_multimodal runs the vision encoder, then the selection, and returns the kept rows",
        (f"{_MODELS}.llava:LlavaForConditionalGeneration.embed_multimodal",
         f"{_MODELS}.llava_next:LlavaNextForConditionalGeneration.embed_multimodal",
         f"{_MODELS}.qwen2_vl:Qwen2VLForConditionalGeneration.embed_multimodal",
         f"{_MODELS}.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.embed_multimodal",
         f"{_MODELS}.qwen3_vl:Qwen3VLForConditionalGeneration.embed_multimodal",
         "vllm.distributed.parallel_state:get_tensor_model_parallel_rank"),
    ),
    TouchPoint(
        "family processors", SUBCLASSED, "zspa_vllm/models/*.py",
        "each family's processor and processing info, with the placeholder count of a pruned item",
        (f"{_MODELS}.llava:BaseLlavaMultiModalProcessor._get_prompt_updates", f"{_MODELS}.llava:_build_llava_or_pixtral_hf_processor",
         f"{_MODELS}.llava:BaseLlavaProcessingInfo.get_num_image_tokens",
         f"{_MODELS}.llava_next:LlavaNextProcessingInfo.get_num_image_tokens",
         f"{_MODELS}.llava_next:LlavaNextMultiModalProcessor._get_prompt_updates",
         f"{_MODELS}.qwen2_vl:Qwen2VLProcessingInfo.get_hf_processor", f"{_MODELS}.qwen2_vl:Qwen2VLMultiModalProcessor._get_prompt_updates",
         f"{_MODELS}.qwen2_5_vl:Qwen2_5_VLProcessingInfo.get_hf_processor",
         f"{_MODELS}.qwen2_5_vl:Qwen2_5_VLMultiModalProcessor._get_prompt_updates",
         f"{_MODELS}.qwen3_vl:Qwen3VLProcessingInfo.get_hf_processor", f"{_MODELS}.qwen3_vl:Qwen3VLMultiModalProcessor._get_prompt_updates",
         f"{_MODELS}.qwen3_vl:Qwen3VLMultiModalProcessor._apply_hf_processor_main",
         "vllm.multimodal.processing.context:BaseProcessingInfo._merge_and_resolve_mm_processor_kwargs",
         f"{_MODELS}.qwen2_vl:Qwen2VLProcessingInfo._merge_and_resolve_mm_processor_kwargs"),
    ),
    TouchPoint(
        "M-RoPE positions of pruned items", OVERRIDDEN, "zspa_vllm/worker/mrope.py, zspa_vllm/models/qwen.py",
        "kept tokens keep their unpruned positions: the prompt's positions and the recompute after the selection",
        (f"{_MODELS}.qwen2_vl:Qwen2VLForConditionalGeneration.get_mrope_input_positions",
         f"{_MODELS}.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions",
         f"{_MODELS}.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.recompute_mrope_positions",
         f"{_MODELS}.qwen3_vl:Qwen3VLForConditionalGeneration.get_mrope_input_positions",
         f"{_MODELS}.qwen3_vl:Qwen3VLForConditionalGeneration.recompute_mrope_positions",
         f"{_MODELS}.qwen3_vl:Qwen3VLForConditionalGeneration._get_mrope_input_positions",
         "vllm.v1.worker.gpu.mm.rope:RopeState.init_prefill_positions"),
    ),
    TouchPoint(
        "no encoder CUDA graph for pruned items", OVERRIDDEN, "zspa_vllm/worker/model.py",
        "vLLM's encoder CUDA graphs assume the unpruned output size",
        (f"{_MODELS}.qwen2_vl:Qwen2VLForConditionalGeneration.get_encoder_cudagraph_config",
         f"{_MODELS}.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration.get_encoder_cudagraph_config",
         f"{_MODELS}.qwen3_vl:Qwen3VLForConditionalGeneration.get_encoder_cudagraph_config"),
    ),
    TouchPoint(
        "Qwen3-VL deepstack columns", READ, "zspa_vllm/models/qwen.py, zspa_vllm/models/qwen3_vl.py",
        "an image row is [main | deepstack levels]; the selection reads the main columns, the kept rows keep all",
        (f"{_MODELS}.qwen3_vl:Qwen3VLForConditionalGeneration._compute_deepstack_embeds",
         f"{_MODELS}.qwen3_vl:Qwen3_VisionTransformer.forward"),
    ),
    TouchPoint(
        "Qwen3 videos", READ, "zspa_vllm/models/qwen.py, zspa_vllm/models/qwen3_vl.py",
        "vLLM's video token count and Qwen3-VL's per-frame layout, which the pruned video keeps",
        (f"{_MODELS}.qwen2_vl:Qwen2VLProcessingInfo.get_num_video_tokens",
         f"{_MODELS}.qwen3_vl:Qwen3VLMultiModalProcessor.get_video_repl"),
    ),
    TouchPoint(
        "Qwen3.5 / Qwen3.5-MoE", SUBCLASSED, "zspa_vllm/models/qwen3_5.py, qwen3_5_moe.py",
        "no deepstack; the class vLLM registers moved to vllm.models.qwen3_5 in 0.34 (vllm_versions.LOCATIONS)",
        (f"{_MODELS}.qwen3_5:Qwen3_5ForConditionalGeneration.embed_input_ids", f"{_MODELS}.qwen3_5:Qwen3_5ProcessingInfo.get_hf_config",
         f"{_MODELS}.qwen3_5:Qwen3_5MoeProcessingInfo.get_hf_config", f"{_MODELS}.qwen3_5:Qwen3_5ForConditionalGeneration.__init__",
         "vllm.models.qwen3_5:Qwen3_5ForConditionalGeneration.embed_input_ids", "vllm.models.qwen3_5:Qwen3_5ForConditionalGeneration.__init__"),
    ),
    TouchPoint(
        "a worker's data-parallel engine", READ, "zspa_vllm/worker/model.py",
        "the workers' counters are labelled per DP engine; a dense model's engines reset data_parallel_rank to 0, "
        "the engine's index stays in data_parallel_index",
        ("vllm.config.parallel:ParallelConfig", "vllm.config.parallel:ParallelConfig.reconfigure_for_independent_dp_rank"),
        checked_by="tests/server/test_scale_out.py::test_metrics_count_every_api_server_and_engine",
    ),
    TouchPoint(
        "V1 runner: recompute positions for images", WRAPPED, "zspa_vllm/worker/runner_hooks.py",
        "vLLM recomputes M-RoPE positions only for EVS video pruning; the wrapper makes the runner do it for ours",
        ("vllm.v1.worker.gpu_model_runner:GPUModelRunner._gather_mm_embeddings",),
        releases="0.32-0.33",
        checked_by="tests/unit/test_upstream_hooks.py::test_the_runners_hooked_are_the_ones_that_run",
    ),
    TouchPoint(
        "Model Runner V2: our pruner", WRAPPED, "zspa_vllm/worker/runner_hooks.py",
        "MRv2 builds its M-RoPE pruner only for EVS; the wrapped factory builds one for our models, a "
        "subclass whose recompute passes steps without pruned rows through "
        "(vllm_versions.PRUNER_FACTORIES: GPU runner, and 0.34's non-x86 CPU runner)",
        ("vllm.v1.worker.gpu.model_states.mm_pruning:maybe_create_mm_pruner", "vllm.v1.worker.gpu.model_states.mm_pruning:MultiModalPruner.__init__",
         "vllm.v1.worker.gpu.model_states.mm_pruning:MultiModalPruner.recompute",
         "vllm.v1.worker.gpu.model_states.mm_pruning:MultiModalPruner", "vllm.v1.worker.gpu.model_states.default",
         "vllm.v1.worker.cpu.mm_pruning:maybe_create_mm_pruner", "vllm.v1.worker.cpu.mm_pruning:MultiModalPruner.__init__",
         "vllm.v1.worker.cpu.mm_pruning:MultiModalPruner.recompute",
         "vllm.v1.worker.cpu.mm_pruning:MultiModalPruner", "vllm.v1.worker.cpu.model_states.default"),
    ),
    TouchPoint(
        "Gemma 3's bidirectional image block", READ, "zspa_vllm/models/gemma3.py",
        "the block is the placeholder's embed range, so a shortened run is a shortened block",
        ("vllm.v1.worker.gpu_model_runner:GPUModelRunner", "vllm.v1.attention.backends.utils:compute_mm_prefix_ranges",
         "vllm.v1.worker.gpu.model_states.default:DefaultModelState"),
        checked_by="tests/unit/test_upstream_hooks.py::test_the_cpu_backend_builds_no_bidirectional_image_block",
    ),
    # --- the serve CLI and the HTTP layer (API-server process) ---
    TouchPoint(
        "serve CLI building blocks", CALLED, "zspa_serve/cli.py",
        "zspa-serve is vllm serve with our flags; the parser and env setup moved in 0.33 (vllm_versions.LOCATIONS)",
        ("vllm.entrypoints.launchers.cli_args:make_arg_parser", "vllm.entrypoints.serve.utils.api_utils:cli_env_setup",
         "vllm.entrypoints.common.cli_args:make_arg_parser", "vllm.entrypoints.common.startup:cli_env_setup"),
    ),
    TouchPoint(
        "/metrics with several API servers", READ, "zspa_serve/metrics.py",
        "with PROMETHEUS_MULTIPROC_DIR set (--api-server-count > 1, data parallelism) vLLM's /metrics serves a new "
        "registry over the processes' multiprocess files only; ours, mounted ahead of it, adds the workers' series",
        ("vllm.v1.metrics.prometheus:get_prometheus_registry", "vllm.entrypoints.serve.instrumentator.metrics:attach_router"),
        checked_by="tests/server/test_scale_out.py::test_metrics_count_every_api_server_and_engine",
    ),
    TouchPoint(
        "media connector", REGISTERED, "zspa_serve/media.py",
        "media URLs are fetched through a session that refuses non-public addresses; bad media is a 400",
        ("vllm.multimodal.media.connector:MediaConnector.load_from_url_async", "vllm.multimodal.media.connector:MediaConnector.load_from_url",
         "vllm.multimodal.media.connector:MediaConnector._load_file_url", "vllm.multimodal.media.base:MediaIO.get_max_bytes",
         "vllm.connections:HTTPConnection.get_async_client", "vllm.exceptions:VLLMValidationError.__init__",
         "vllm.renderers.chat_utils", "vllm.renderers.chat_utils.content_parser",
         "vllm.multimodal.media.image:ImageMediaIO.load_bytes",
         "vllm.entrypoints.serve.exception_handling.error_response:create_error_response"),
    ),
)


def targets() -> list[str]:
    """Every pinned place, in catalogue order, once."""
    return list(dict.fromkeys(t for point in TOUCH_POINTS for t in point.targets))
