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
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor._call_hf_processor": "(self, hf_data: collections.abc.Mapping[str, object], hf_kwargs: collections.abc.Mapping[str, object]) -> object",
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_mm_fields_config": "(self, hf_inputs: object, hf_processor_mm_kwargs: collections.abc.Mapping[str, object]) -> collections.abc.Mapping[str, vllm.multimodal.inputs.MultiModalFieldConfig]",
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor._get_prompt_updates": "(self, mm_items: vllm.multimodal.parse.MultiModalDataItems, hf_processor_mm_kwargs: collections.abc.Mapping[str, object], out_mm_kwargs: vllm.multimodal.inputs.MultiModalKwargsItems) -> collections.abc.Sequence[vllm.multimodal.processing.processor.PromptUpdate]",
    "vllm.multimodal.processing.processor:BaseMultiModalProcessor.__init__": "(self, info: ~_I, dummy_inputs: 'BaseDummyInputsBuilder[_I]') -> None",
    "vllm.multimodal.processing.inputs:ProcessorInputs.get_mm_hashes": "(self, model_id: str, hash_algorithm: Literal['blake3', 'sha256', 'sha512']) -> collections.abc.Mapping[str, list[str]]",
    "vllm.multimodal.registry:MultiModalRegistry.register_processor": "(self, processor: vllm.multimodal.registry.MultiModalProcessorFactory[~_I], *, info: vllm.multimodal.registry.ProcessingInfoFactory[~_I], dummy_inputs: vllm.multimodal.registry.DummyInputsBuilderFactory[~_I])",
    "vllm.multimodal.inputs:MultiModalFieldConfig.batched": "(modality: str, *, keep_on_cpu: bool = False)",
    # model side (zspa_vllm/model.py, zspa_vllm/models/llava.py)
    "vllm.model_executor.models.llava:LlavaForConditionalGeneration.embed_multimodal": "(self, **kwargs: object) -> list[torch.Tensor] | torch.Tensor | tuple[torch.Tensor, ...]",
    "vllm.model_executor.models.llava:BaseLlavaMultiModalProcessor._get_prompt_updates": "(self, mm_items: vllm.multimodal.parse.MultiModalDataItems, hf_processor_mm_kwargs: collections.abc.Mapping[str, object], out_mm_kwargs: vllm.multimodal.inputs.MultiModalKwargsItems) -> collections.abc.Sequence[vllm.multimodal.processing.processor.PromptUpdate]",
    "vllm.model_executor.models.llava:_build_llava_or_pixtral_hf_processor": "(info: ~_I, dummy_inputs: vllm.multimodal.processing.dummy_inputs.BaseDummyInputsBuilder[~_I]) -> vllm.multimodal.processing.processor.BaseMultiModalProcessor",
    "vllm.model_executor.models.llava:BaseLlavaProcessingInfo.get_num_image_tokens": "(self, *, image_width: int, image_height: int) -> int",
}

# dataclass fields the processor reads or replaces
FIELDS = {
    "vllm.multimodal.processing.inputs:ProcessorInputs": ["prompt", "mm_data_items", "mm_uuid_items", "hf_processor_mm_kwargs", "media_io_kwargs", "cache"],
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
    """The per-question cache key rides on vLLM hashing processor kwargs into each
    item's hash; if that stops, cached tokens could be served for another question."""
    from vllm.multimodal.parse import MultiModalDataParser
    from vllm.multimodal.processing.inputs import ProcessorInputs
    from PIL import Image

    items = MultiModalDataParser().parse_mm_data({"image": Image.new("RGB", (8, 8))})
    hashes = {
        ProcessorInputs([1], items, hf_processor_mm_kwargs=kw).get_mm_hashes("m", "sha256")["image"][0]
        for kw in ({}, {"zspa": "a"}, {"zspa": "b"})
    }
    assert len(hashes) == 3
