"""Which prompt tokens form the query that each image's (or video's) visual tokens are
ranked against. A video follows the same rules as an image, by its own placeholder.

The text of a user turn is its content with every special token (image placeholders,
role markers, BOS/EOS) removed and whitespace collapsed, re-tokenized without special
tokens. Each family names its chat template's user-turn pattern (group 1 = the content).

Rule ``image_turn`` (the default): an image is ranked against the text of the user turn
that holds it; a turn with no text lends it the text of the next user turn that has some;
with none, the query is empty (diversity-only selection). An image's query so never
changes as a conversation grows, and neither do its placeholders, its hash or its kept
tokens: vLLM's prefix and encoder caches keep serving earlier turns.

Rule ``last_turn``: every image is ranked against the last user turn (re-selected, and
its caches lost, at every new turn).

Rule ``first``: ``image_turn``'s query the first time an image is pruned with these knobs,
remembered by the API server for every later request about that image
(``zspa_vllm.frontend.first_queries``), so separate questions about one image keep its
selection and its prefix cache.

A prompt that matches no user turn (a raw completion prompt) ranks every image against
its whole text, under either rule. A system prompt, role names and the assistant's
turns are never part of a query.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# The user turns of each chat-template style (group 1 = the turn's content).
LLAVA_USER_TURN = re.compile(r"USER:(.*?)ASSISTANT:", re.S)  # llava-1.5 (llava-hf)
MISTRAL_USER_TURN = re.compile(r"\[INST\](.*?)\[/INST\]", re.S)  # llava-v1.6-mistral
CHATML_USER_TURN = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)  # Qwen2.5-VL
CHATML_SPACE_USER_TURN = re.compile(r"<\|im_start\|>user[ \n](.*?)<\|im_end\|>", re.S)  # llava-onevision
GEMMA_USER_TURN = re.compile(r"<start_of_turn>user\n(.*?)<end_of_turn>", re.S)  # gemma-3-it


def clean_text(text: str, special_tokens: Sequence[str]) -> str:
    """``text`` without special tokens, whitespace collapsed."""
    for token in sorted(special_tokens, key=len, reverse=True):  # longest first
        if token:
            text = text.replace(token, " ")
    return " ".join(text.split())


def query_text(prompt: str, user_turn: re.Pattern[str] | None, special_tokens: Sequence[str]) -> str:
    """The last user turn's text in a rendered ``prompt`` (its whole text if no turn)."""
    matches = list(user_turn.finditer(prompt)) if user_turn is not None else []
    text = matches[-1].group(1) if matches else prompt
    return clean_text(text, special_tokens)


def item_query_texts(
    prompt: str,
    user_turn: re.Pattern[str] | None,
    special_tokens: Sequence[str],
    marker: str,
    num_items: int,
    scope: str,
) -> list[str]:
    """The query text of each of the ``num_items`` images (or videos) of a rendered
    ``prompt``, in order; ``marker`` is the text of an item's placeholder token. If the
    markers cannot be matched one run per item, every item gets the last turn's text."""
    turns = list(user_turn.finditer(prompt)) if user_turn is not None else []
    if scope == "last_turn" or not turns:
        return [query_text(prompt, user_turn, special_tokens)] * num_items
    starts = _marker_runs(prompt, marker)
    if len(starts) != num_items:
        return [query_text(prompt, user_turn, special_tokens)] * num_items
    texts = [clean_text(turn.group(1), special_tokens) for turn in turns]
    queries = []
    for start in starts:
        # the turn holding the item, or the first one after it; then the first with text
        first = next((j for j, turn in enumerate(turns) if turn.end() > start), len(turns))
        queries.append(next((text for text in texts[first:] if text), ""))
    return queries


def item_query_token_ids(
    tokenizer,
    prompt_ids: Sequence[int],
    user_turn: re.Pattern[str] | None,
    placeholder_id: int,
    num_items: int,
    scope: str,
) -> list[list[int]]:
    """Token ids of each item's query in ``prompt_ids`` (a tokenized, templated prompt
    whose images or videos are still one placeholder token ``placeholder_id`` each)."""
    prompt = tokenizer.decode(list(prompt_ids), skip_special_tokens=False)
    marker = tokenizer.decode([placeholder_id], skip_special_tokens=False)
    texts = item_query_texts(prompt, user_turn, _special_token_strings(tokenizer), marker, num_items, scope)
    encoded = {text: list(tokenizer.encode(text, add_special_tokens=False)) if text else [] for text in set(texts)}
    return [encoded[text] for text in texts]


def query_token_ids(tokenizer, prompt_ids: Sequence[int], user_turn: re.Pattern[str] | None) -> list[int]:
    """Token ids of the last user turn's text in ``prompt_ids``."""
    prompt = tokenizer.decode(list(prompt_ids), skip_special_tokens=False)
    text = query_text(prompt, user_turn, _special_token_strings(tokenizer))
    return list(tokenizer.encode(text, add_special_tokens=False)) if text else []


def _marker_runs(prompt: str, marker: str) -> list[int]:
    """Start offsets of the runs of back-to-back ``marker`` strings in ``prompt`` (an
    already expanded placeholder run counts once)."""
    starts, end = [], -1
    for match in re.finditer(re.escape(marker), prompt):
        if match.start() != end:
            starts.append(match.start())
        end = match.end()
    return starts


def _special_token_strings(tokenizer) -> list[str]:
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    # added tokens flagged special (image/video pads, role markers) are not always listed
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            specials.add(str(token))
    return sorted(specials)
