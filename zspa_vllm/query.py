"""Which prompt tokens form the query that visual tokens are ranked against.

Rule: the query is the text of the LAST user turn of the templated prompt, with every
special token (image placeholders, role markers, BOS/EOS) removed and surrounding
whitespace stripped, re-tokenized without special tokens. A system prompt, earlier
turns, role names and the assistant prefix are never part of it. Each family names its
last-user-turn pattern; a prompt that does not match (a raw completion prompt) uses its
whole text. An image-only turn gives an empty query (diversity-only selection).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# The last user turn of each chat-template style (group 1 = the turn's content).
LLAVA_USER_TURN = re.compile(r"USER:(.*?)ASSISTANT:", re.S)  # llava-1.5 (llava-hf)
MISTRAL_USER_TURN = re.compile(r"\[INST\](.*?)\[/INST\]", re.S)  # llava-v1.6-mistral
CHATML_USER_TURN = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)  # Qwen2.5-VL


def query_text(prompt: str, user_turn: re.Pattern[str] | None, special_tokens: Sequence[str]) -> str:
    """The user's question inside a rendered ``prompt`` (see the module docstring)."""
    matches = list(user_turn.finditer(prompt)) if user_turn is not None else []
    text = matches[-1].group(1) if matches else prompt
    for token in sorted(special_tokens, key=len, reverse=True):  # longest first
        if token:
            text = text.replace(token, " ")
    return " ".join(text.split())


def query_token_ids(
    tokenizer, prompt_ids: Sequence[int], user_turn: re.Pattern[str] | None
) -> list[int]:
    """Token ids of the user's question in ``prompt_ids`` (a tokenized, templated prompt)."""
    prompt = tokenizer.decode(list(prompt_ids), skip_special_tokens=False)
    text = query_text(prompt, user_turn, _special_token_strings(tokenizer))
    if not text:
        return []
    return list(tokenizer.encode(text, add_special_tokens=False))


def _special_token_strings(tokenizer) -> list[str]:
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    # added tokens flagged special (image/video pads, role markers) are not always listed
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            specials.add(str(token))
    return sorted(specials)
