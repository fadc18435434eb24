"""The query rule on each family's real chat template (fixture tokenizers)."""

import pytest
from transformers import AutoTokenizer

from tests.engine.harness import fixture_path
from zspa_vllm.core.query import CHATML_USER_TURN, LLAVA_USER_TURN, MISTRAL_USER_TURN, query_text, query_token_ids

FAMILIES = {
    "llava-1.5": LLAVA_USER_TURN,
    "llava-next": MISTRAL_USER_TURN,
    "qwen2.5-vl": CHATML_USER_TURN,
    "qwen2-vl": CHATML_USER_TURN,
    "qwen3-vl": CHATML_USER_TURN,
    "qwen3-vl-moe": CHATML_USER_TURN,
    "qwen3.5": CHATML_USER_TURN,
    "qwen3.5-moe": CHATML_USER_TURN,
}


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
    from zspa_vllm.models.qwen2_vl import ZspaQwen2VLMultiModalProcessor
    from zspa_vllm.models.qwen3_vl import ZspaQwen3VLMultiModalProcessor
    from zspa_vllm.models.qwen3_vl_moe import ZspaQwen3VLMoeForConditionalGeneration
    from zspa_vllm.models.qwen3_5 import ZspaQwen3_5ForConditionalGeneration
    from zspa_vllm.models.qwen3_5_moe import ZspaQwen3_5MoeForConditionalGeneration

    processors = {
        "llava-1.5": ZspaLlavaMultiModalProcessor,
        "llava-next": ZspaLlavaNextMultiModalProcessor,
        "qwen2.5-vl": ZspaQwen2_5_VLMultiModalProcessor,
        "qwen2-vl": ZspaQwen2VLMultiModalProcessor,
        "qwen3-vl": ZspaQwen3VLMultiModalProcessor,
        # registered for the MoE model class
        "qwen3-vl-moe": ZspaQwen3VLMoeForConditionalGeneration._processor_factory.processor,
        "qwen3.5": ZspaQwen3_5ForConditionalGeneration._processor_factory.processor,
        "qwen3.5-moe": ZspaQwen3_5MoeForConditionalGeneration._processor_factory.processor,
    }
    assert {family: cls.QUERY_PATTERN for family, cls in processors.items()} == FAMILIES


# --------------------------------------------------------------------------- per image
IMAGE_TOKENS = {family: "<image>" if family.startswith("llava") else "<|image_pad|>" for family in FAMILIES}

# (messages, the query of each image under image_turn, under last_turn)
CHATS = {
    "follow-up without image": (
        [_user(None, "How many squares?"), _assistant("Three."), _user("And circles?")],
        ["How many squares?"],
        ["And circles?"],
    ),
    "an image per turn": (
        [_user(None, "How many squares?"), _assistant("Three."), _user(None, "Is this one brighter?")],
        ["How many squares?", "Is this one brighter?"],
        ["Is this one brighter?"] * 2,
    ),
    "image-only turn borrows the next question": (
        [_user(None), _assistant("Nice."), _user("What is on the left?"), _assistant("A cat."), _user("Sure?")],
        ["What is on the left?"],
        ["Sure?"],
    ),
    "image-only turn, no question yet": ([_user(None)], [""], [""]),
    "two images in one turn": (
        [_user(None, None, "Which one is brighter?")],
        ["Which one is brighter?"] * 2,
        ["Which one is brighter?"] * 2,
    ),
    "three turns, images in turns 1 and 3": (
        [
            _user(None, "Count the circles."),
            _assistant("Two."),
            _user("Their colours?"),
            _assistant("Red."),
            _user("Describe this:", None),
        ],
        ["Count the circles.", "Describe this:"],
        ["Describe this:"] * 2,
    ),
}


def _queries(family, messages, scope):
    from zspa_vllm.core.query import item_query_token_ids

    tokenizer = AutoTokenizer.from_pretrained(fixture_path(family))
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKENS[family])
    num_images = ids.count(image_id)
    queries = item_query_token_ids(tokenizer, ids, FAMILIES[family], image_id, num_images, scope)
    return [tokenizer.decode(q) for q in queries]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", CHATS)
def test_each_image_is_ranked_against_its_own_turn(family, case):
    messages, image_turn, last_turn = CHATS[case]
    assert _queries(family, messages, "image_turn") == image_turn
    assert _queries(family, messages, "last_turn") == last_turn


@pytest.mark.parametrize("family", FAMILIES)
def test_an_image_keeps_its_query_as_the_chat_grows(family):
    turn1 = [_user(None, "How many squares?")]
    chat = turn1
    for follow_up in ("And circles?", "Which is largest?", "Thanks, and the colour?"):
        chat = [*chat, _assistant("Some."), _user(follow_up)]
        assert _queries(family, chat, "image_turn") == _queries(family, turn1, "image_turn") == ["How many squares?"]
    assert _queries(family, chat, "last_turn") == ["Thanks, and the colour?"]


def test_markers_that_do_not_match_the_images_fall_back_to_the_last_turn():
    from zspa_vllm.core.query import item_query_texts

    prompt = "USER: <image>\nfirst ASSISTANT: a</s>USER: second ASSISTANT:"
    specials = ["<image>", "</s>"]
    assert item_query_texts(prompt, LLAVA_USER_TURN, specials, "<image>", 1, "image_turn") == ["first"]
    # an already expanded run of placeholders is one image
    expanded = prompt.replace("<image>", "<image>" * 5)
    assert item_query_texts(expanded, LLAVA_USER_TURN, specials, "<image>", 1, "image_turn") == ["first"]
    # two images but one marker run: cannot tell which is which, so the last turn's text
    assert item_query_texts(prompt, LLAVA_USER_TURN, specials, "<image>", 2, "image_turn") == ["second", "second"]
    # no turn at all (a raw prompt): the whole text, under either scope
    raw = "<image>\nDescribe the picture."
    for scope in ("image_turn", "last_turn"):
        assert item_query_texts(raw, LLAVA_USER_TURN, specials, "<image>", 1, scope) == ["Describe the picture."]
