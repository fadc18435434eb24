"""The query rule on each family's real chat template (fixture tokenizers)."""

import pytest
from transformers import AutoTokenizer

from tests.engine.harness import fixture_path
from zspa_vllm.query import CHATML_USER_TURN, LLAVA_USER_TURN, MISTRAL_USER_TURN, query_text, query_token_ids

FAMILIES = {"llava-1.5": LLAVA_USER_TURN, "llava-next": MISTRAL_USER_TURN, "qwen2.5-vl": CHATML_USER_TURN}


def _user(*parts):
    content = [{"type": "image"} if p is None else {"type": "text", "text": p} for p in parts]
    return {"role": "user", "content": content}


def _assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


CONVERSATIONS = {
    "image then question": ([_user(None, "What color is the big circle?")], "What color is the big circle?"),
    "question then image": ([_user("Describe this:", None)], "Describe this:"),
    "two images": ([_user(None, None, "Which one is brighter?")], "Which one is brighter?"),
    "multi-turn: last user turn only": (
        [_user(None, "How many squares?"), _assistant("Three squares."), _user("And circles?")],
        "And circles?",
    ),
    "image only": ([_user(None)], ""),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", CONVERSATIONS)
def test_query_is_exactly_the_last_user_question(family, case):
    messages, question = CONVERSATIONS[case]
    tokenizer = AutoTokenizer.from_pretrained(fixture_path(family))
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    expected = tokenizer.encode(question, add_special_tokens=False) if question else []
    assert query_token_ids(tokenizer, ids, FAMILIES[family]) == expected


def test_system_prompt_and_roles_are_not_the_query():
    tokenizer = AutoTokenizer.from_pretrained(fixture_path("qwen2.5-vl"))
    messages = [{"role": "system", "content": "You are a pirate."}, _user(None, "Where is the ship?")]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "You are a pirate." in prompt
    ids = query_token_ids(tokenizer, tokenizer.encode(prompt, add_special_tokens=False), CHATML_USER_TURN)
    assert tokenizer.decode(ids) == "Where is the ship?"


def test_unmatched_prompt_uses_its_whole_text_without_special_tokens():
    assert query_text("<s><image>\nfree text here</s>", LLAVA_USER_TURN, ["<s>", "</s>", "<image>"]) == "free text here"
    assert query_text("USER: <image>\nhi ASSISTANT:", None, ["<image>"]) == "USER: hi ASSISTANT:"


def test_each_family_processor_uses_the_pattern_tested_here():
    from zspa_vllm.models.llava import ZspaLlavaMultiModalProcessor
    from zspa_vllm.models.llava_next import ZspaLlavaNextMultiModalProcessor
    from zspa_vllm.models.qwen2_5_vl import ZspaQwen2_5_VLMultiModalProcessor

    processors = {
        "llava-1.5": ZspaLlavaMultiModalProcessor,
        "llava-next": ZspaLlavaNextMultiModalProcessor,
        "qwen2.5-vl": ZspaQwen2_5_VLMultiModalProcessor,
    }
    assert {family: cls.QUERY_PATTERN for family, cls in processors.items()} == FAMILIES
