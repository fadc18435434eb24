"""zspa_vllm.frontend.one_run: a replacement's one run of embed positions, shortened."""

import pytest
import torch


def _details(seq, token):
    from vllm.multimodal.processing import PromptUpdateDetails

    return PromptUpdateDetails.select_token_id(seq, token)


def test_bare_run_becomes_the_budget():
    from zspa_vllm.frontend.one_run import shrink_run

    assert shrink_run([7] * 10, lambda n: n // 4, "x") == [7, 7]
    assert shrink_run([7] * 10, lambda n: n, "x") == [7] * 10


def test_wrapped_run_keeps_its_wrappers_and_mask():
    from zspa_vllm.frontend.one_run import embed_positions, shrink_run

    # Gemma 3 / InternVL shape: text, start token, the run, end token, text
    seq = [1, 2, 5] + [9] * 8 + [6, 2, 1]
    out = shrink_run(_details(seq, 9), lambda n: n // 2, "x")
    assert out.full == [1, 2, 5] + [9] * 4 + [6, 2, 1]
    assert embed_positions(out) == [3, 4, 5, 6]
    assert embed_positions(_details(seq, 9)) == list(range(3, 11))


def test_n_is_read_from_the_embed_mask():
    from zspa_vllm.frontend.one_run import shrink_run

    seen = []
    shrink_run(_details([5] + [9] * 6 + [6], 9), lambda n: seen.append(n) or n, "x")
    assert seen == [6]


@pytest.mark.parametrize(
    "seq, mask, runs",
    [
        ([5, 9, 9, 3, 9, 9, 6], None, 2),  # two runs (Gemma 3 pan-and-scan crops, Pixtral rows)
        ([5, 9, 9, 8, 8, 6], [0, 1, 1, 1, 1, 0], 1),  # one run of two tokens (row separators)
    ],
)
def test_other_layouts_are_refused_with_their_shape(seq, mask, runs):
    from vllm.multimodal.processing import PromptUpdateDetails

    from zspa_vllm.frontend.one_run import NotOneRun, shrink_run

    if mask is None:
        info = _details(seq, 9)
    else:
        info = PromptUpdateDetails(full=seq, is_embed=lambda full: torch.tensor(mask, dtype=torch.bool))
    with pytest.raises(NotOneRun, match=rf"cannot prune Foo's image items: .* \({runs} runs"):
        shrink_run(info, lambda n: 1, "Foo's image items")


def test_a_mask_that_does_not_follow_the_run_is_refused():
    from vllm.multimodal.processing import PromptUpdateDetails

    from zspa_vllm.frontend.one_run import NotOneRun, shrink_run

    # a positional mask (always positions 1..3) cannot describe a shorter run
    info = PromptUpdateDetails(full=[5, 9, 9, 9, 6], is_embed=lambda full: torch.tensor([0, 1, 1, 1, 0][: len(full)] + [0] * max(0, len(full) - 5), dtype=torch.bool))
    with pytest.raises(NotOneRun, match="does not follow"):
        shrink_run(info, lambda n: 1, "x")


def test_layouts_that_are_not_one_run_are_refused_with_why():
    from zspa_serve.plugin import support_for
    from zspa_vllm import MODEL_OVERRIDES, NOT_ONE_RUN

    assert not set(NOT_ONE_RUN) & set(MODEL_OVERRIDES)
    pixtral = support_for(["PixtralForConditionalGeneration"], "mistralai/Pixtral-12B-2409")
    assert not pixtral.prunes
    assert "[IMG_BREAK]" in pixtral.reason and "not one run per image" in pixtral.reason
    other = support_for(["SomethingElse"], "m")
    assert not other.prunes and "is not one of" in other.reason
    for arch in ("LlavaOnevisionForConditionalGeneration", "Gemma3ForConditionalGeneration"):
        assert support_for([arch], "m").prunes


def test_refused_architectures_are_real_vllm_architectures():
    from vllm import ModelRegistry

    from zspa_vllm import NOT_ONE_RUN

    assert set(NOT_ONE_RUN) <= set(ModelRegistry.get_supported_archs())


def test_encoder_graphs_are_kept_only_for_modalities_that_are_not_pruned():
    """A captured vision-encoder graph hands its output straight to the prefill, past
    embed_multimodal: Gemma 3's (images) and the Qwen families' must be off for pruned
    modalities, on for the rest."""
    from vllm.model_executor.models.gemma3_mm import Gemma3ForConditionalGeneration
    from vllm.v1.worker.encoder_cudagraph_defs import EncoderCudaGraphConfig

    from zspa_vllm.worker.model import NoEncoderGraphForPrunedMixin
    from zspa_vllm.models.gemma3 import ZspaGemma3ForConditionalGeneration
    from zspa_vllm.models.qwen2_5_vl import ZspaQwen2_5_VLForConditionalGeneration

    class Graphs:
        def get_encoder_cudagraph_config(self):
            return EncoderCudaGraphConfig(modalities=["image", "video", "audio"], buffer_keys=["pixel_values"], out_hidden_size=8)

    class Pruned(NoEncoderGraphForPrunedMixin, Graphs):
        pass

    config = Pruned().get_encoder_cudagraph_config()
    assert config.modalities == ["audio"] and config.buffer_keys == ["pixel_values"]
    assert Graphs().get_encoder_cudagraph_config().modalities == ["image", "video", "audio"]
    for cls in (ZspaGemma3ForConditionalGeneration, ZspaQwen2_5_VLForConditionalGeneration):
        assert issubclass(cls, NoEncoderGraphForPrunedMixin)
    assert "get_encoder_cudagraph_config" in vars(Gemma3ForConditionalGeneration)


def test_families_that_count_with_the_hf_processor_use_the_shared_count():
    """The mixin must come before OneRunProcessorMixin, whose base has the default count."""
    from zspa_vllm.models.gemma3 import ZspaGemma3MultiModalProcessor
    from zspa_vllm.models.internvl import ZspaInternVLMultiModalProcessor
    from zspa_vllm.frontend.one_run import CountWithHfProcessorMixin

    for cls in (ZspaGemma3MultiModalProcessor, ZspaInternVLMultiModalProcessor):
        owner = next(c for c in cls.__mro__ if "_zspa_num_image_tokens" in vars(c))
        assert owner is CountWithHfProcessorMixin, cls
