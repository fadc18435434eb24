"""What a pruned answer must equal, computed without the plugin's code path: vLLM's own
(parent-class) encoder rows and ``select_tokens`` for the selection, and transformers fed
the kept rows for the logprobs. Shared by zspa-selfcheck and the engine tests.

1-D RoPE families (LLaVA-1.5/NeXT/OneVision, Gemma 3, InternVL): the kept rows fill the
shortened run, positions follow the pruned prompt. M-RoPE families (the Qwen ones): the
kept rows sit at their unpruned (t, h, w) positions (``positions_for``), and Qwen3-VL's
kept rows carry their deepstack levels.
"""

from __future__ import annotations

from pathlib import Path

import torch

from zspa_selfcheck.compare import step_logprobs
from zspa_selfcheck.engine import vllm_class_of
from zspa_selfcheck.families import QWEN_FAMILIES
from zspa_selfcheck.images import make_image
from zspa_vllm.core.selection import select_tokens


# --------------------------------------------------------------------------- transformers
def hf_model(fixture: Path):
    """transformers' model (float32, CPU) and processor of a fixture folder."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(fixture, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(fixture)


def _llava_hf_rows(model, inputs):
    config = model.config
    return model.model.get_image_features(
        pixel_values=inputs["pixel_values"],
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    ).pooler_output[0]


def _anyres_hf_rows(model, inputs, **extra):
    """LLaVA-NeXT / OneVision: the base view, then the unpadded grid with a newline row
    end each (OneVision pools it first: ``vision_aspect_ratio``)."""
    config = model.config
    return model.model.get_image_features(
        pixel_values=inputs["pixel_values"],
        image_sizes=inputs["image_sizes"],
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        **extra,
    ).pooler_output[0]


def _onevision_hf_rows(model, inputs):
    return _anyres_hf_rows(model, inputs, vision_aspect_ratio=model.config.vision_aspect_ratio)


def _internvl_hf_rows(model, inputs):
    config = model.config
    tiles = model.model.get_image_features(
        pixel_values=inputs["pixel_values"],
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    ).pooler_output
    return tiles.reshape(-1, tiles.shape[-1])  # the tiles in order, thumbnail last


def _gemma3_hf_rows(model, inputs):
    return model.model.get_image_features(inputs["pixel_values"]).pooler_output[0]


# transformers' unpruned rows of ONE image, (HF model, HF image-processor outputs) -> (n, d)
HF_ROWS = {
    "llava-1.5": _llava_hf_rows,
    "llava-next": _anyres_hf_rows,
    "llava-onevision": _onevision_hf_rows,
    "gemma3": _gemma3_hf_rows,
    "internvl": _internvl_hf_rows,
}
# the families whose image tokens attend to each other both ways (transformers builds the
# blocks from token_type_ids, 1 = image)
BIDIRECTIONAL = {"gemma3"}


def image_inputs(processor, image):
    return processor.image_processor(images=[image], return_tensors="pt")


def one_run_diffs(hf, family: str, out, images, kept_sets, image_token: int, bidirectional: bool) -> dict[str, float]:
    """A 1-D RoPE family: max |logprob difference| of vLLM's first generated position
    against transformers fed the pruned prompt with, in each image's run, "kept" (its
    kept rows), "first rows" (its first l rows instead: must be far off), and for Gemma 3
    "other mask" (the attention mask the engine does not use: both ways where vLLM's
    attention is causal, causal where it builds the bidirectional block)."""
    model, processor = hf
    ids = torch.tensor(out.prompt_token_ids)
    mask = ids == image_token
    with torch.no_grad():
        rows = [HF_ROWS[family](model, image_inputs(processor, make_image(*image))) for image in images]
        both_ways = {"token_type_ids": mask.long()[None]}

        def diff(chosen, forward) -> float:
            embeds = model.get_input_embeddings()(ids)
            embeds[mask] = torch.cat([r[list(k)] for r, k in zip(rows, chosen)]).to(embeds.dtype)
            logits = model(inputs_embeds=embeds[None], **forward).logits[0, -1]
            reference = torch.log_softmax(logits.float(), dim=-1)
            return max(abs(float(reference[t]) - lp) for t, lp in step_logprobs(out, 0).items())

        engine_mask = both_ways if bidirectional else {}
        diffs = {
            "kept": diff(kept_sets, engine_mask),
            "first rows": diff([range(len(k)) for k in kept_sets], engine_mask),
        }
        if family in BIDIRECTIONAL:
            diffs["other mask"] = diff(kept_sets, {} if bidirectional else both_ways)
    return diffs


def positions_for(token_ids, grids, kept_sets, rule: str, image_token: int) -> torch.Tensor:
    """(3, 1, L) M-RoPE position ids of a pruned prompt, written from the model's
    definition: text advances all three by 1; an image's token at merged-grid cell
    (r, c) sits at base + (0, r, c); the text after it continues at base + max(h, w).
    rule "unpruned" is that; "width" continues from base + w (vLLM EVS's rule);
    "consecutive" gives every token the next position, as if the prompt were text."""
    ids = list(token_ids)
    if rule == "consecutive":
        return torch.arange(len(ids)).view(1, 1, -1).expand(3, 1, -1).clone()
    rows, i, nxt, image = [], 0, 0, 0
    while i < len(ids):
        if ids[i] != image_token:
            rows.append((nxt, nxt, nxt))
            nxt, i = nxt + 1, i + 1
            continue
        (grid_h, grid_w), kept = grids[image], kept_sets[image]
        rows.extend((nxt, nxt + k // grid_w, nxt + k % grid_w) for k in kept)
        nxt += max(grid_h, grid_w) if rule == "unpruned" else grid_w
        i, image = i + len(kept), image + 1
    return torch.tensor(rows).T.reshape(3, 1, -1)


def mrope_diffs(hf, out, images, kept_sets):
    """An M-RoPE family: max |logprob difference| of vLLM's first generated position
    against transformers fed the kept rows, per position rule (and, for Qwen3-VL, with
    the deepstack levels zeroed: "no-deepstack"); with the merged grids and
    transformers' greedy token at the unpruned positions."""
    model, processor = hf
    image_token = model.config.image_token_id
    pil = [make_image(*image) for image in images]
    inputs = processor.image_processor(images=pil, return_tensors="pt")
    merge = processor.image_processor.merge_size
    grids = [(int(h) // merge, int(w) // merge) for _, h, w in inputs["image_grid_thw"].tolist()]
    ids = torch.tensor(out.prompt_token_ids)
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        embeds = model.get_input_embeddings()(ids)
        embeds[ids == image_token] = torch.cat([v[list(kept)] for v, kept in zip(features.pooler_output, kept_sets)])
        # Qwen3-VL: per deepstack level, the kept rows' features (added to the first LLM layers)
        levels = getattr(features, "deepstack_features", None) or []
        deepstack = [torch.cat([v[list(kept)] for v, kept in zip(level, kept_sets)]) for level in levels]

        def logprobs(rule: str, deepstack=deepstack) -> torch.Tensor:
            position_ids = positions_for(ids, grids, kept_sets, rule, image_token)
            if not deepstack:
                logits = model(inputs_embeds=embeds[None], position_ids=position_ids).logits[0, -1]
            else:
                hidden = model.model.language_model(
                    inputs_embeds=embeds[None],
                    position_ids=position_ids,
                    visual_pos_masks=(ids == image_token)[None],
                    deepstack_visual_embeds=deepstack,
                ).last_hidden_state
                logits = model.lm_head(hidden)[0, -1]
            return torch.log_softmax(logits.float(), dim=-1)

        def diff(reference) -> float:
            return max(abs(float(reference[t]) - lp) for t, lp in step_logprobs(out, 0).items())

        diffs = {rule: diff(logprobs(rule)) for rule in ("unpruned", "consecutive", "width")}
        if deepstack:
            diffs["no-deepstack"] = diff(logprobs("unpruned", deepstack=[torch.zeros_like(d) for d in deepstack]))
        top = int(logprobs("unpruned").argmax())
    return diffs, grids, top


# --------------------------------------------------------------------------- vLLM's own rows
def unpruned_rows(model, family: str, inputs):
    """vLLM's own (parent-class) vision encoder + projector of a 1-D RoPE family on the HF
    image processor's outputs for ONE image: its (n, d) rows, as the plugin sees them."""
    parent = vllm_class_of(model)
    if family in ("llava-next", "llava-onevision"):
        out = parent.embed_multimodal(model, pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    elif family == "internvl":
        image_token_id = torch.tensor(model.config.image_token_id)
        out = parent.embed_multimodal(
            model, pixel_values=inputs["pixel_values"], image_num_patches=inputs["num_patches"], image_token_id=image_token_id
        )
    elif family == "gemma3":
        out = parent.embed_multimodal(model, pixel_values=inputs["pixel_values"], num_patches=torch.tensor([1]))
    else:  # LLaVA-1.5
        out = parent.embed_multimodal(model, pixel_values=inputs["pixel_values"])
    return out[0]


def main_features(model, visual: torch.Tensor) -> torch.Tensor:
    """The LLM-input columns of a Qwen image's rows, which the selection compares: Qwen3-VL
    rows also carry their deepstack levels, hidden_size columns each."""
    return visual[:, : model.config.text_config.hidden_size]


def expected_selection(llm, family: str, fixture: Path, image, query_ids, keep: int, core_ratio: float, method: str):
    """(n, kept indices) ``select_tokens`` picks from vLLM's own unpruned rows of ``image``
    (width, height, seed) and the LLM's embeddings of ``query_ids``, in the engine."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(fixture)
    pil = make_image(*image)
    if family in QWEN_FAMILIES:
        # as the engine gets them: vLLM normalises Qwen pixels in the model (mm_device_do_normalize)
        inputs = processor.image_processor(images=[pil], do_rescale=False, do_normalize=False, return_tensors="pt")
    else:
        inputs = image_inputs(processor, pil)

    def expected(model):
        device = next(model.parameters()).device
        with torch.inference_mode():
            if family in QWEN_FAMILIES:
                (visual,) = model.embed_multimodal(
                    pixel_values=inputs["pixel_values"].to(torch.uint8).to(device), image_grid_thw=inputs["image_grid_thw"]
                )
                rows = main_features(model, visual)
            else:
                rows = unpruned_rows(model, family, {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()})
            query = model.get_language_model().embed_input_ids(torch.tensor(query_ids, dtype=torch.long, device=device))
            kept = select_tokens(rows, query if len(query_ids) else None, keep, core_ratio, method=method)
        return rows.shape[0], kept.tolist()

    return llm.apply_model(expected)[0]
