"""Pruning for every family whose item fills ONE contiguous run of embed positions.

Most 1-D RoPE VLMs in vLLM 0.32 share that shape: each image's embeddings fill one run
of identical placeholder tokens, possibly wrapped in start/end tokens (which vLLM's
``PromptUpdateDetails.is_embed`` marks as text), and ``embed_multimodal`` returns one
tensor per image, its rows 1:1 with that run. Such a family is pruned by wrapping its own
prompt updates: ``n`` is the length of the run in vLLM's own embed mask of the
replacement, only that run shrinks to ``l = num_kept(n, keep_rate)``, every wrapper and
separator token stays. The worker half is ``zspa_vllm.worker.model.PruningModelMixin`` unchanged
(it checks that the encoder returned ``n`` rows per item and hands back ``l``).

A replacement that is not one run (several runs, a run of mixed tokens, an insertion
instead of a replacement) is refused at request time with a message naming it, never
served with placeholders the model would fill wrongly.

A family declares only what differs: its ``QUERY_PATTERN``, its placeholder token
(``_zspa_placeholder_id``) where it is not the config's ``image_token_index``, and its
unpruned token count where vLLM's ``info.get_num_image_tokens(image_width=,
image_height=)`` is not it (``_zspa_num_image_tokens``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

from zspa_vllm.core.fields import split_plan
from zspa_vllm.frontend.processor import PruningProcessorMixin


class NotOneRun(ValueError):
    """A replacement whose embed positions are not one run of one token."""


def embed_positions(info) -> list[int]:
    """Where a replacement (token list or ``PromptUpdateDetails``) puts embeddings,
    by vLLM's own mask."""
    full = list(getattr(info, "full", info))
    is_embed = getattr(info, "is_embed", None)
    if is_embed is None:
        return list(range(len(full)))
    return [i for i, flag in enumerate(is_embed(full).tolist()) if flag]


def shrink_run(info, keep: Callable[[int], int], what: str):
    """``info`` with its one run of embed positions (``n`` long) cut to ``keep(n)``
    tokens, everything around it unchanged; raises ``NotOneRun`` otherwise."""
    from vllm.multimodal.processing import PromptUpdateDetails

    full = list(getattr(info, "full", info))
    where = embed_positions(info)
    if not where:
        raise NotOneRun(f"zspa-vllm cannot prune {what}: its replacement has no embedding positions")
    start, end = where[0], where[-1] + 1
    if end - start != len(where) or len(set(full[start:end])) != 1:
        runs = 1 + sum(1 for a, b in zip(where, where[1:]) if b != a + 1)
        raise NotOneRun(
            f"zspa-vllm cannot prune {what}: its {len(where)} embedding positions are not one run of one "
            f"token ({runs} runs of {len(set(full[start:end]))} distinct tokens); serve it with keep_rate 1"
        )
    kept = keep(len(where))
    shrunk = full[:start] + full[start : start + 1] * kept + full[end:]
    if getattr(info, "is_embed", None) is None:
        return shrunk
    result = PromptUpdateDetails(full=shrunk, is_embed=info.is_embed)
    if embed_positions(result) != list(range(start, start + kept)):
        raise NotOneRun(f"zspa-vllm cannot prune {what}: its embed mask does not follow a shorter run")
    return result


class OneRunProcessorMixin(PruningProcessorMixin):
    """Mix in before a vLLM multimodal processor whose pruned items are one run each."""

    NOT_ONE_RUN_HINT: ClassVar[str] = ""  # what makes an item several runs, for the refusal

    def _zspa_placeholder_id(self, modality: str) -> int:
        return self.info.get_hf_config().image_token_index

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        # the family's own updates never see our kwarg (some build or merge HF processor
        # kwargs from these, and vLLM caches an HF processor per distinct value)
        plan, rest = split_plan(hf_processor_mm_kwargs)
        updates = super()._get_prompt_updates(mm_items, rest, out_mm_kwargs)
        if plan is None:
            return updates
        return [self._zspa_shrunk(u, plan) if u.modality in self.PRUNED_MODALITIES else u for u in updates]

    def _zspa_shrunk(self, update, plan):
        from vllm.multimodal.processing import PromptReplacement

        what = f"{type(self).__name__.removeprefix('Zspa')}'s {update.modality} items{self.NOT_ONE_RUN_HINT}"
        if not isinstance(update, PromptReplacement):
            raise NotOneRun(f"zspa-vllm cannot prune {what}: vLLM inserts their tokens, it does not replace a run")

        def replacement(item_idx: int):
            full = update.replacement(item_idx) if callable(update.replacement) else update.replacement
            return shrink_run(full, lambda n: plan.budget(n)[0], what)

        return dataclasses.replace(update, replacement=replacement)


class CountWithHfProcessorMixin:
    """Mix in first (before ``OneRunProcessorMixin``) for families whose vLLM
    ``info.get_num_image_tokens`` also takes the HF processor and the request's processor
    kwargs (Gemma 3: pan-and-scan crops; InternVL: tiles)."""

    def _zspa_num_image_tokens(self, width, height, mm_kwargs):
        processor = self.info.get_hf_processor(**mm_kwargs)
        return int(self.info.get_num_image_tokens(image_width=width, image_height=height, processor=processor, mm_kwargs=mm_kwargs))
