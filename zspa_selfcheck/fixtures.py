"""The tiny random-weight model fixtures: the tests' (tests/fixtures/models, written by
``make fixtures``) and zspa-selfcheck's (built in a temporary folder on the user's machine,
in seconds, no download).

One folder per architecture family, each loadable by vLLM 0.32 (CPU) and transformers 5.19:

  llava-1.5/    LlavaForConditionalGeneration      (CLIP 336/14 -> 576 image tokens)
  llava-next/   LlavaNextForConditionalGeneration  (CLIP 336/14, anyres tiling, Mistral LM)
  qwen2.5-vl/   Qwen2_5_VLForConditionalGeneration (patch 14, merge 2, window attention, M-RoPE)
  qwen2-vl/     Qwen2VLForConditionalGeneration    (patch 14, merge 2, full attention, M-RoPE)
  qwen3-vl/     Qwen3VLForConditionalGeneration    (patch 16, merge 2, DeepStack, interleaved M-RoPE)
  qwen3-vl-moe/ Qwen3VLMoeForConditionalGeneration (as qwen3-vl, Qwen3-MoE LM with 4 experts, top-2)
  qwen3.5/      Qwen3_5ForConditionalGeneration    (Qwen3-VL's vision side without DeepStack, hybrid
                                                    Gated DeltaNet + full-attention LM, partial M-RoPE)
  qwen3.5-moe/  Qwen3_5MoeForConditionalGeneration (as qwen3.5, MoE LM with 4 experts + shared expert)
  llava-onevision/ LlavaOnevisionForConditionalGeneration (SigLIP 384/14, anyres_max_9, Qwen2 LM)
  gemma3/       Gemma3ForConditionalGeneration     (SigLIP 896/14 pooled to 256 tokens, Gemma 3 LM with
                                                    sliding + full attention, bidirectional image tokens)
  internvl/     InternVLForConditionalGeneration   (InternViT 448/14, pixel shuffle to 256 tokens per tile,
                                                    up to 12 tiles + thumbnail, Qwen2 LM; transformers format)

The geometry (image size, patch size, grid pinpoints, merge size, feature layer ...) is
that of the real checkpoints; only the widths and depths are tiny. Weights are random,
initialised by the transformers model's own ``__init__`` under a fixed torch seed, and
written with the tensor names of the real hub checkpoints (llava-hf/llava-1.5-7b-hf,
llava-hf/llava-v1.6-mistral-7b-hf, Qwen/Qwen2.5-VL-7B-Instruct, Qwen/Qwen2-VL-7B-Instruct,
Qwen/Qwen3-VL-8B-Instruct, Qwen/Qwen3-VL-30B-A3B-Instruct, Qwen/Qwen3.5-27B,
Qwen/Qwen3.5-35B-A3B, llava-hf/llava-onevision-qwen2-0.5b-ov-hf, google/gemma-3-4b-it, OpenGVLab/InternVL3-1B-hf). These are NOT real models: their
outputs are meaningless, but they depend on the image and the text.

The tokenizers are byte-level BPE models trained here on the fixed corpus below (so any
text encodes), wrapped as transformers fast tokenizers with each family's special tokens.
The processors are the real processor classes with chat templates in the real models'
style.

Run:  python scripts/make_fixtures.py [--out tests/fixtures/models] [--only NAME ...]
      (or ``build(family, folder)``). Reruns overwrite the folders and produce
byte-identical weights for the same torch build.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

SEED = 1234
BPE_VOCAB = 1024  # upper bound for the byte-level BPE vocabulary (this corpus yields ~880)
DTYPE = "float32"
MAX_POSITIONS = 32768

# LLM shape shared by all families: hidden 128, 2 layers, 2 heads of 64 (vLLM's CPU
# attention supports head_dim 64, not 16), 1 KV head, intermediate 256.
LLM = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=64,
    max_position_embeddings=MAX_POSITIONS,
)

# Fixed English corpus the BPE tokenizer is trained on.
CORPUS = """\
Describe the image in detail. What is shown in this picture? How many objects are there?
What color is the large square in the middle of the image? Is there a circle near the top?
The picture shows a red ball on a green lawn next to a small wooden house with a blue door.
A cat is sitting on a window sill and looking at the birds in the garden outside.
Two people are walking along a sandy beach at sunset, and the sky is orange and purple.
There is a black dog running across the street while a yellow car waits at the light.
Please answer the question briefly. Answer with a single word. Explain your reasoning.
Which animal is on the left side? What is written on the sign? Where was this photo taken?
The chart shows the number of visitors per month; the highest value is in July.
A table holds three cups of coffee, a plate of cookies, and an open book about history.
Mountains rise behind a quiet lake, and a boat with white sails floats near the shore.
Read the text in the image and summarize it in one sentence for a young reader.
Count the people in the room. Is anyone wearing a hat? What time does the clock show?
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
She sells sea shells by the sea shore, and the shells she sells are surely sea shells.
In the kitchen there is a stove, a fridge, a sink full of dishes, and a window with plants.
The map marks a river that runs from the northern hills to the southern sea through a city.
You are a helpful assistant. The user asks a question about an image and you answer it.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 24 32 64 100 128 256 336 512 576 672 1008 1024.
Punctuation and symbols: , . ; : ! ? ' " ( ) [ ] { } < > / \\ | - _ + = * & % $ # @ ~ `
Left, right, top, bottom, center, corner, edge, background, foreground, shadow, light.
Red, orange, yellow, green, blue, purple, pink, brown, black, white, gray, gold, silver.
Circle, square, triangle, rectangle, line, dot, stripe, pattern, texture, gradient, noise.
"""

LLAVA_SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in the Llama tokenizer
LLAVA_ADDED = ["<image>", "<pad>"]  # appended after the BPE vocabulary, as in llava-hf
QWEN_ADDED = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Chat templates in the style of the real processors' templates.
LLAVA15_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if message['content'] is string %}"
    "{{ '<<SYS>>\\n' + message['content'] + '\\n<</SYS>>\\n\\n' }}"
    "{% else %}{{ '<<SYS>>\\n' + message['content'][0]['text'] + '\\n<</SYS>>\\n\\n' }}{% endif %}"
    "{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}"
    "{% endif %}"
    "{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if message['content'] is string %}{{ ' ' + message['content'] + '</s>' }}"
    "{% else %}{{ ' ' + message['content'][0]['text'] + '</s>' }}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
)

# Pieces of the Qwen-VL-Instruct templates: the image/video counters, one ChatML turn with
# the vision placeholders ("Picture n: " / "Video n: " before them with add_vision_id), and
# the generation prompt.
_QWEN_VL_COUNTERS = "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
_QWEN_VL_TURN = (
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
)
_QWEN_VL_GENERATION_PROMPT = "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"

# The Qwen2.5-VL-Instruct template (default system prompt, vision placeholders).
QWEN25VL_CHAT_TEMPLATE = (
    _QWEN_VL_COUNTERS
    + "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    + _QWEN_VL_TURN
    + "{% endfor %}"
    + _QWEN_VL_GENERATION_PROMPT
)

# The Qwen3-VL-Instruct template without its tool-calling and <think> parts: NO default
# system prompt (a system message is rendered only when the conversation has one), every
# message one ChatML turn, the same vision placeholders as Qwen2.5-VL's.
QWEN3VL_CHAT_TEMPLATE = (
    _QWEN_VL_COUNTERS
    + "{% for message in messages %}"
    + _QWEN_VL_TURN
    + "{% endfor %}"
    + _QWEN_VL_GENERATION_PROMPT
)

# The Qwen3.5 template without its tool-calling parts: no default system prompt, the same
# turns and vision placeholders, and thinking on by default: the generation prompt opens
# a <think> block (enable_thinking=False renders an empty one).
QWEN35_CHAT_TEMPLATE = (
    _QWEN_VL_COUNTERS
    + "{% for message in messages %}"
    + _QWEN_VL_TURN
    + "{% endfor %}"
    + "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)
QWEN35_ADDED = ("<think>", "</think>")  # plain added tokens, as in the real tokenizer

# llava-onevision-qwen2-*-ov-hf: ChatML with a space after the role, images and videos
# first, then "\n" + each text part.
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# gemma-3-*-it: a system turn is folded into the first user turn; images are
# "<start_of_image>" where they stand, text trimmed.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first = (messages[0]['content'] if messages[0]['content'] is string else messages[0]['content'][0]['text']) + '\\n\\n' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' + (first if loop.first else '') }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# InternVL3-*-hf: ChatML; an image is "<IMG_CONTEXT>\\n" where it stands.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The real llava-onevision grid: (384 i, 384 j) for i, j in 1..6.
ONEVISION_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]

# Real llava-v1.6 any-resolution grid.
LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

# Qwen2.5-VL pixel bounds: the real min_pixels; max_pixels capped at 2048 merged tokens
# per image (the real default, 12845056, allows 16384 and makes vLLM's start-up profile
# run encode a huge dummy image).
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 2048 * 28 * 28

# Qwen3-VL (patch 16, merge 2: one token per 32x32 pixels). Images: the real min
# (shortest_edge 65536 = 64 tokens); longest_edge capped at 2048 tokens per image like
# QWEN_MAX_PIXELS (the real 16777216 allows 16384). Videos: Qwen3VLVideoProcessor bounds
# frames x height x width of the whole clip; the real min 4096; longest_edge capped at
# 2048 tokens per clip (2 frames per temporal patch; the real 25165824 allows 12288).
QWEN3_PATCH = 16
QWEN3_MIN_PIXELS = 65536
QWEN3_MAX_PIXELS = 2048 * 32 * 32
QWEN3_VIDEO_MIN_PIXELS = 4096
QWEN3_VIDEO_MAX_PIXELS = 2 * 2048 * 32 * 32

# Qwen3-MoE LLM: 4 experts, top-2, every layer sparse. moe_intermediate_size must not be
# hidden / 2: transformers loads the fused gate_up_proj [E, H, 2I] by transposing it only
# when its shape differs from the in-memory [E, 2I, H], so a square one would load
# untransposed (vLLM always transposes). 32: a multiple of vLLM's CPU MoE alignment (32).
QWEN3_MOE = dict(
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    decoder_sparse_step=1,
    mlp_only_layers=[],
    norm_topk_prob=True,
)


# --------------------------------------------------------------------------- tokenizers
def _train_bpe(special_tokens: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        min_frequency=1,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return tok


def make_llava_tokenizer(chat_template: str):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_bpe(LLAVA_SPECIALS)
    # Like the real Llama tokenizer: a BOS is prepended on encode.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token=None,
        model_max_length=MAX_POSITIONS,
        padding_side="left",
        chat_template=chat_template,
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    fast.add_special_tokens({"pad_token": "<pad>"})
    assert [fast.convert_tokens_to_ids(t) for t in LLAVA_SPECIALS] == [0, 1, 2]
    return fast


def make_qwen_tokenizer(chat_template: str, extra_tokens: tuple[str, ...] = ()):
    from transformers import PreTrainedTokenizerFast

    tok = _train_bpe([])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=MAX_POSITIONS,
        padding_side="right",
        chat_template=chat_template,
    )
    # Appended in the real order (<|endoftext|> first); the real Qwen2.5-VL tokenizer has
    # no BOS, eos <|im_end|>, pad <|endoftext|>.
    fast.add_special_tokens({"additional_special_tokens": QWEN_ADDED})
    fast.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    fast.add_tokens(list(extra_tokens))  # after the specials: image/video ids stay 888/889
    return fast


def _ids(tokenizer, tokens: list[str]) -> dict[str, int]:
    out = {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}
    assert all(isinstance(i, int) and i >= 0 for i in out.values()), out
    assert len(set(out.values())) == len(out), out
    return out


# --------------------------------------------------------------------------- weights
def _save_weights(model, out: Path, rename, convert=None) -> dict[str, tuple[int, ...]]:
    """Write model.safetensors with tensor names mapped by ``rename`` (transformers 5
    in-memory names -> real hub checkpoint names) and, where the hub layout differs from
    the in-memory one, tensors mapped by ``convert(hub_name, tensor)`` (a tensor, or a
    dict of hub names to tensors where the hub splits one)."""
    state = {}
    for name, tensor in model.state_dict().items():
        new = rename(name)
        tensor = tensor.detach()
        converted = convert(new, tensor) if convert is not None else tensor
        # a dict: the hub stores this tensor as several (per-expert weights)
        for hub_name, hub_tensor in (converted if isinstance(converted, dict) else {new: converted}).items():
            assert hub_name not in state, hub_name
            state[hub_name] = hub_tensor.to(torch.float32).contiguous().clone()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return {k: tuple(v.shape) for k, v in sorted(state.items())}


def _llava_rename(name: str) -> str:
    # llava-hf checkpoints (pre transformers 4.52 layout, still the one on the hub):
    #   language_model.model.*, language_model.lm_head.*, multi_modal_projector.*,
    #   vision_tower.vision_model.*, image_newline (NeXT)
    for old, new in (
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.image_newline", "image_newline"),
    ):
        if name.startswith(old):
            return new + name[len(old) :]
    raise KeyError(f"unexpected LLaVA tensor name {name!r}")


def _qwen_rename(name: str) -> str:
    # Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct: model.* (LLM), lm_head.*, visual.*
    for old, new in (
        ("model.language_model.", "model."),
        ("model.visual.", "visual."),
        ("lm_head.", "lm_head."),
    ):
        if name.startswith(old):
            return new + name[len(old) :]
    raise KeyError(f"unexpected Qwen-VL tensor name {name!r}")


def _qwen3_rename(name: str) -> str:
    # Qwen/Qwen3-VL-8B-Instruct, Qwen/Qwen3-VL-30B-A3B-Instruct: transformers' own layout
    # (model.language_model.*, model.visual.*, lm_head.*), the one vLLM's
    # Qwen3VLForConditionalGeneration.hf_to_vllm_mapper maps.
    if name.startswith(("model.language_model.", "model.visual.", "lm_head.")):
        return name
    raise KeyError(f"unexpected Qwen3-VL tensor name {name!r}")


def _qwen3_moe_experts_to_hub(name: str, tensor: torch.Tensor) -> torch.Tensor:
    # Qwen/Qwen3-VL-30B-A3B-Instruct stores the fused experts of each layer as
    # mlp.experts.gate_up_proj [E, hidden, 2 * moe_intermediate] (gate half first) and
    # mlp.experts.down_proj [E, moe_intermediate, hidden]; transformers 5 keeps them
    # transposed in memory ([E, 2I, H], [E, H, I]) and transposes on load when the shapes
    # differ (conversion_mapping "qwen3_vl_moe"); vLLM transposes them on load
    # (Qwen3VLMoeDecoderLayer: is_fused_checkpoint_transposed=True).
    if name.endswith((".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")):
        assert tensor.dim() == 3, (name, tensor.shape)
        return tensor.transpose(1, 2)
    return tensor


# --------------------------------------------------------------------------- families
def _clip_vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,  # head_dim 64
        image_size=336,
        patch_size=14,
        projection_dim=128,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


def _clip_image_processor(processor_cls=None, **extra):
    from transformers import CLIPImageProcessor

    # Real openai/clip-vit-large-patch14-336 preprocessing (LLaVA-NeXT's adds anyres tiling).
    return (processor_cls or CLIPImageProcessor)(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        do_resize=True,
        do_center_crop=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True,
        resample=3,
        **extra,
    )


def _llava_text_config(config_cls, architecture: str, tokenizer, ids, **extra):
    """The LLM half of a LLaVA-family config (Llama for 1.5, Mistral for NeXT)."""
    text = config_cls(
        vocab_size=len(tokenizer),
        hidden_act="silu",
        rms_norm_eps=1e-5,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
        tie_word_embeddings=False,
        **extra,
        **LLM,
    )
    text.architectures = [architecture]
    return text


def _llava_config(config_cls, architecture: str, text, ids, **extra):
    """A LLaVA-family config around the CLIP 336/14 tower and a 2-layer GELU projector."""
    config = config_cls(
        vision_config=_clip_vision_config(),
        text_config=text,
        image_token_index=ids["<image>"],
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=576,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
        pad_token_id=ids["<pad>"],
        **extra,
    )
    config.architectures = [architecture]
    return config


def _llava_processor(processor_cls, image_processor, tokenizer, chat_template: str):
    """The llava-hf processor around a CLIP 336/14 image processor (CLS token dropped)."""
    return processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by "default"
        chat_template=chat_template,
        image_token="<image>",
    )


def build_llava15(out: Path) -> dict:
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = make_llava_tokenizer(LLAVA15_CHAT_TEMPLATE)
    ids = _ids(tokenizer, ["<s>", "</s>", "<unk>", "<pad>", "<image>"])
    text = _llava_text_config(LlamaConfig, "LlamaForCausalLM", tokenizer, ids, rope_theta=10000.0)
    config = _llava_config(LlavaConfig, "LlavaForConditionalGeneration", text, ids)
    processor = _llava_processor(LlavaProcessor, _clip_image_processor(), tokenizer, LLAVA15_CHAT_TEMPLATE)
    notes = [
        "CLIP ViT 336/14 (hidden 64, 2 layers), vision_feature_layer -2, strategy 'default':"
        " 576 image tokens for any image size.",
        "LLM: Llama, hidden 128, 2 layers, 2 heads x 64, 1 KV head.",
        "Chat: 'USER: <image>\\n{text} ASSISTANT:' (llava-hf style).",
    ]
    return _write(
        out, LlavaForConditionalGeneration, config, processor, _llava_rename, ids, notes
    )


def build_llava_next(out: Path) -> dict:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        MistralConfig,
    )

    tokenizer = make_llava_tokenizer(LLAVA_NEXT_CHAT_TEMPLATE)
    ids = _ids(tokenizer, ["<s>", "</s>", "<unk>", "<pad>", "<image>"])
    text = _llava_text_config(
        MistralConfig, "MistralForCausalLM", tokenizer, ids, rope_theta=1000000.0, sliding_window=None
    )
    config = _llava_config(
        LlavaNextConfig,
        "LlavaNextForConditionalGeneration",
        text,
        ids,
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
    )
    image_processor = _clip_image_processor(
        LlavaNextImageProcessor, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS, do_pad=True
    )
    processor = _llava_processor(LlavaNextProcessor, image_processor, tokenizer, LLAVA_NEXT_CHAT_TEMPLATE)
    notes = [
        "CLIP ViT 336/14 (hidden 64, 2 layers), anyres with the llava-v1.6 grid pinpoints"
        f" {LLAVA_NEXT_PINPOINTS} and image_newline: token count depends on image size.",
        "LLM: Mistral, hidden 128, 2 layers, 2 heads x 64, 1 KV head.",
        "Chat: '[INST] <image>\\n{text} [/INST]' (llava-v1.6-mistral style).",
    ]
    return _write(
        out, LlavaNextForConditionalGeneration, config, processor, _llava_rename, ids, notes
    )


def _qwen2_llm_config(tokenizer, ids):
    """The plain (1-D RoPE) Qwen2 LLM of the LLaVA-OneVision and InternVL fixtures."""
    from transformers import Qwen2Config

    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        use_sliding_window=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        **LLM,
    )
    text.architectures = ["Qwen2ForCausalLM"]
    return text


def build_llava_onevision(out: Path) -> dict:
    from tokenizers import AddedToken
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        SiglipVisionConfig,
    )

    tokenizer = make_qwen_tokenizer(ONEVISION_CHAT_TEMPLATE)
    # as in the real tokenizer: <image> and <video> right after the ChatML specials, special
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("<image>", "<video>")], special_tokens=True)
    ids = _ids(tokenizer, QWEN_ADDED + ["<image>", "<video>"])
    text = _qwen2_llm_config(tokenizer, ids)
    vision = SiglipVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,  # head_dim 64
        image_size=384,
        patch_size=14,
        vision_use_head=False,
        layer_norm_eps=1e-6,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=ONEVISION_PINPOINTS,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=False,
    )
    config.architectures = ["LlavaOnevisionForConditionalGeneration"]
    # SigLIP preprocessing of the real checkpoint (mean = std = 0.5, 384 x 384, bicubic)
    geometry = dict(size={"height": 384, "width": 384}, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3)
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(image_grid_pinpoints=ONEVISION_PINPOINTS, do_pad=True, **geometry),
        video_processor=LlavaOnevisionVideoProcessor(**geometry),
        tokenizer=tokenizer,
        num_image_tokens=729,
        vision_feature_select_strategy="full",
        chat_template=ONEVISION_CHAT_TEMPLATE,
        vision_aspect_ratio="anyres_max_9",
    )
    notes = [
        "SigLIP 384/14 (hidden 64, 2 layers, no head): 729 features per tile; anyres with the"
        " real 36 grid pinpoints and 'anyres_max_9' (grid features pooled down to ~9 tiles),"
        " an image_newline row after every grid row: the count depends on image size.",
        "LLM: Qwen2, hidden 128, 2 layers, 2 heads x 64, 1 KV head.",
        "Chat: '<|im_start|>user <image>\\n{text}<|im_end|>' (llava-onevision-qwen2 style).",
    ]
    return _write(out, LlavaOnevisionForConditionalGeneration, config, processor, _llava_rename, ids, notes)


def build_gemma3(out: Path) -> dict:
    from tokenizers import AddedToken
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
        PreTrainedTokenizerFast,
        SiglipVisionConfig,
    )

    tok = _train_bpe(["<pad>", "<eos>", "<bos>", "<unk>"])  # ids 0-3 as in the Gemma tokenizer
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=MAX_POSITIONS,
        padding_side="left",
        chat_template=GEMMA3_CHAT_TEMPLATE,
        extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    )
    # Gemma's vocabulary has runs of newlines as single tokens; vLLM's Gemma 3 processor
    # merges "\n\n" next to "\n" into them, as the real tokenizer does
    tokenizer.add_tokens([AddedToken("\n" * k, normalized=False) for k in (1, 2, 3, 4)])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    names = ["<pad>", "<eos>", "<bos>", "<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<end_of_turn>"]
    ids = _ids(tokenizer, names)
    assert [ids[t] for t in names[:3]] == [0, 1, 2]
    text = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=LLM["hidden_size"],
        intermediate_size=LLM["intermediate_size"],
        num_hidden_layers=LLM["num_hidden_layers"],
        num_attention_heads=LLM["num_attention_heads"],
        num_key_value_heads=LLM["num_key_value_heads"],
        head_dim=LLM["head_dim"],
        max_position_embeddings=MAX_POSITIONS,
        hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        query_pre_attn_scalar=LLM["head_dim"],
        # the real pattern is 5 sliding layers to 1 full; 2 layers: one of each
        sliding_window=1024,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        },
        bos_token_id=ids["<bos>"],
        eos_token_id=ids["<eos>"],
        pad_token_id=ids["<pad>"],
        tie_word_embeddings=True,
    )
    vision = SiglipVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,  # head_dim 64
        image_size=896,
        patch_size=14,
        vision_use_head=False,
        layer_norm_eps=1e-6,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=256,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    config.architectures = ["Gemma3ForConditionalGeneration"]
    image_processor = Gemma3ImageProcessor(
        size={"height": 896, "width": 896},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        resample=2,
        do_pan_and_scan=False,
        pan_and_scan_min_crop_size=256,
        pan_and_scan_max_num_crops=4,
        pan_and_scan_min_ratio_to_activate=1.2,
    )
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=GEMMA3_CHAT_TEMPLATE, image_seq_length=256)
    notes = [
        "SigLIP 896/14 (hidden 64, 2 layers, no head): 64 x 64 patches average-pooled to 16 x 16 = 256"
        " soft tokens per image (or per pan-and-scan crop), between '\\n\\n<start_of_image>' and"
        " '<end_of_image>\\n\\n'.",
        "LLM: Gemma 3, hidden 128, 2 layers (one sliding-window, one full), 2 heads x 64, 1 KV head;"
        " image tokens attend bidirectionally.",
        "Tokenizer: byte-level BPE with Gemma's newline-run tokens and named boi/eoi/image tokens.",
        "Chat: '<bos><start_of_turn>user\\n<start_of_image>{text}<end_of_turn>' (gemma-3-it style).",
    ]
    notes.append(
        "transformers initialises the projector's mm_input_projection_weight to zeros (images would not"
        " matter): drawn from N(0, 0.03^2) here instead."
    )

    def init(model):
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.03)

    return _write(out, Gemma3ForConditionalGeneration, config, processor, _gemma3_rename, ids, notes, init=init)


def _gemma3_rename(name: str) -> str:
    # google/gemma-3-4b-it: language_model.model.*, multi_modal_projector.*,
    # vision_tower.vision_model.* (the LM head is tied to the embedding)
    for old, new in (
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.vision_tower.", "vision_tower.vision_model."),
    ):
        if name.startswith(old):
            return new + name[len(old) :]
    raise KeyError(f"unexpected Gemma 3 tensor name {name!r}")


def build_internvl(out: Path) -> dict:
    from tokenizers import AddedToken
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        InternVLVisionConfig,
        PreTrainedTokenizerFast,
    )

    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe([]),
        model_max_length=MAX_POSITIONS,
        padding_side="right",
        chat_template=INTERNVL_CHAT_TEMPLATE,
        extra_special_tokens=named,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]})
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    ids = _ids(tokenizer, ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values()])
    text = _qwen2_llm_config(tokenizer, ids)
    vision = InternVLVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,  # head_dim 64
        attention_bias=True,
        image_size=[448, 448],
        patch_size=[14, 14],
        norm_type="layer_norm",
        layer_scale_init_value=0.1,
        use_mean_pooling=True,
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["<IMG_CONTEXT>"],
        image_seq_length=256,
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    config.architectures = ["InternVLForConditionalGeneration"]
    # the real preprocessing: 448 tiles (1 to 12, by aspect ratio) + a thumbnail, ImageNet normalisation
    geometry = dict(size={"height": 448, "width": 448}, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], resample=3)
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(crop_to_patches=True, min_patches=1, max_patches=12, **geometry),
        video_processor=InternVLVideoProcessor(**geometry),
        tokenizer=tokenizer,
        image_seq_length=256,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    notes = [
        "InternViT 448/14 (hidden 64, 2 layers): 32 x 32 patches per tile, pixel shuffle 0.5 -> 256 tokens per"
        " tile; 1-12 tiles by aspect ratio plus a thumbnail: '<img>' + 256 x tiles '<IMG_CONTEXT>' + '</img>'.",
        "LLM: Qwen2, hidden 128, 2 layers, 2 heads x 64, 1 KV head.",
        "Chat: '<|im_start|>user\\n<IMG_CONTEXT>\\n{text}<|im_end|>' (InternVL3-hf style, no system prompt).",
        "transformers format (served by vLLM's InternS1ForConditionalGeneration), tensor names as in memory.",
    ]
    return _write(out, InternVLForConditionalGeneration, config, processor, _internvl_rename, ids, notes)


def _internvl_rename(name: str) -> str:
    # OpenGVLab/InternVL3-1B-hf: transformers' own layout, which vLLM's mapper maps
    if name.startswith(("model.language_model.", "model.vision_tower.", "model.multi_modal_projector.", "lm_head.")):
        return name
    raise KeyError(f"unexpected InternVL tensor name {name!r}")


def _qwen_text_config(tokenizer, ids) -> dict:
    """The Qwen2 LLM of every Qwen-VL fixture, with M-RoPE."""
    head_dim = LLM["head_dim"]
    # Real 7B: head_dim 128, mrope_section [16, 24, 24] (sum 64 = head_dim / 2).
    mrope_section = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]
    assert sum(mrope_section) == head_dim // 2
    return dict(
        vocab_size=len(tokenizer),
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": mrope_section,
        },
        use_sliding_window=False,
        sliding_window=32768,
        max_window_layers=LLM["num_hidden_layers"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        **LLM,
    )


def _qwen_token_config(ids) -> dict:
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )


def _qwen_processor(processor_cls, tokenizer):
    """The real Qwen2-VL image and video processors (CLIP normalisation), pixel bounds
    QWEN_MIN_PIXELS / QWEN_MAX_PIXELS."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    geometry = dict(
        min_pixels=QWEN_MIN_PIXELS,
        max_pixels=QWEN_MAX_PIXELS,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return processor_cls(
        image_processor=Qwen2VLImageProcessor(**geometry),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**geometry),
        chat_template=QWEN25VL_CHAT_TEMPLATE,
    )


def _qwen_notes(text_config: dict, vision: str, template: str) -> list[str]:
    return [
        vision,
        f"min_pixels {QWEN_MIN_PIXELS} (real); max_pixels {QWEN_MAX_PIXELS} (2048 tokens;"
        " the real 12845056 would make vLLM's start-up profile encode a huge dummy image).",
        f"LLM: hidden 128, 2 layers, 2 heads x 64, 1 KV head, M-RoPE section"
        f" {text_config['rope_parameters']['mrope_section']}.",
        f"Chat: {template} template, default system prompt 'You are a helpful assistant.'",
    ]


def build_qwen25vl(out: Path) -> dict:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    tokenizer = make_qwen_tokenizer(QWEN25VL_CHAT_TEMPLATE)
    ids = _ids(tokenizer, QWEN_ADDED)
    text_config = _qwen_text_config(tokenizer, ids)
    vision_config = dict(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=1,  # head_dim 64
        in_channels=3,
        hidden_act="silu",
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1],  # layer 0 windowed, layer 1 full (real: every 8th)
        out_hidden_size=LLM["hidden_size"],
        tokens_per_second=2,
    )
    config = Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **_qwen_token_config(ids))
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    notes = _qwen_notes(
        text_config,
        "ViT patch 14, temporal patch 2, spatial merge 2 (one token per 28x28 pixels),"
        " window 112 with full attention in block 1 (hidden 64, 2 blocks).",
        "Qwen2.5-VL-Instruct",
    )
    processor = _qwen_processor(Qwen2_5_VLProcessor, tokenizer)
    return _write(out, Qwen2_5_VLForConditionalGeneration, config, processor, _qwen_rename, ids, notes)


def build_qwen2vl(out: Path) -> dict:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    tokenizer = make_qwen_tokenizer(QWEN25VL_CHAT_TEMPLATE)  # Qwen2-VL-Instruct's is the same
    ids = _ids(tokenizer, QWEN_ADDED)
    text_config = _qwen_text_config(tokenizer, ids)
    vision_config = dict(
        depth=2,
        embed_dim=64,  # the ViT width (real 1280)
        hidden_size=LLM["hidden_size"],  # the merger's output: the LLM width
        mlp_ratio=2,
        num_heads=1,  # head_dim 64
        in_channels=3,
        hidden_act="quick_gelu",
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **_qwen_token_config(ids))
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    notes = _qwen_notes(
        text_config,
        "ViT patch 14, temporal patch 2, spatial merge 2 (one token per 28x28 pixels),"
        " full attention in every block, 2D rotary (embed_dim 64, 2 blocks).",
        "Qwen2-VL-Instruct (the same as Qwen2.5-VL's)",
    )
    processor = _qwen_processor(Qwen2VLProcessor, tokenizer)
    return _write(out, Qwen2VLForConditionalGeneration, config, processor, _qwen_rename, ids, notes)


def _qwen3_text_config(tokenizer, ids, **moe) -> dict:
    """The Qwen3 LLM of the Qwen3-VL fixtures (Qwen3-MoE with ``moe``), with interleaved
    M-RoPE."""
    head_dim = LLM["head_dim"]
    # Real 8B / 30B-A3B: head_dim 128, mrope_section [24, 20, 20] (sum 64 = head_dim / 2),
    # T/H/W frequencies interleaved (THWTHW...TT).
    mrope_section = [3 * head_dim // 16, 5 * head_dim // 32, 5 * head_dim // 32]
    assert sum(mrope_section) == head_dim // 2
    return dict(
        vocab_size=len(tokenizer),
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": mrope_section,
            "mrope_interleaved": True,
        },
        attention_bias=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        **LLM,
        **moe,
    )


def _qwen3_vision_config() -> dict:
    return dict(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=1,  # head_dim 64
        in_channels=3,
        hidden_act="gelu_pytorch_tanh",
        patch_size=QWEN3_PATCH,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=LLM["hidden_size"],
        num_position_embeddings=2304,  # real: a learned 48x48 grid, resampled per image
        # Both blocks feed a DeepStack level (real 8B: blocks [8, 16, 24] of 27).
        deepstack_visual_indexes=[0, 1],
    )


def _qwen3_processor(processor_cls, tokenizer, chat_template: str = QWEN3VL_CHAT_TEMPLATE):
    """The real Qwen3-VL image and video processors (patch 16, mean/std 0.5), pixel bounds
    QWEN3_MIN_PIXELS / QWEN3_MAX_PIXELS and QWEN3_VIDEO_MIN_PIXELS / QWEN3_VIDEO_MAX_PIXELS."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLVideoProcessor

    geometry = dict(
        patch_size=QWEN3_PATCH,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return processor_cls(
        image_processor=Qwen2VLImageProcessor(
            size={"shortest_edge": QWEN3_MIN_PIXELS, "longest_edge": QWEN3_MAX_PIXELS}, **geometry
        ),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(
            size={"shortest_edge": QWEN3_VIDEO_MIN_PIXELS, "longest_edge": QWEN3_VIDEO_MAX_PIXELS},
            **geometry,
        ),
        chat_template=chat_template,
    )


def _qwen3_notes(text_config: dict, llm: str) -> list[str]:
    return [
        "ViT patch 16, temporal patch 2, spatial merge 2 (one token per 32x32 pixels), learned"
        " 48x48 position grid (2304) resampled per image, 2D rotary, hidden 64, 2 blocks;"
        " DeepStack: blocks 0 and 1 feed LLM layers 0 and 1 through their own mergers.",
        "DeepStack is not negligible at the default init: zeroing its features changes the"
        " last-token log-probs of an image question by ~0.3 (transformers, when this was made).",
        f"Images: shortest_edge {QWEN3_MIN_PIXELS} (real); longest_edge {QWEN3_MAX_PIXELS}"
        " (2048 tokens; the real 16777216 would make vLLM's start-up profile encode a huge"
        f" dummy image). Videos: shortest_edge {QWEN3_VIDEO_MIN_PIXELS} (real); longest_edge"
        f" {QWEN3_VIDEO_MAX_PIXELS} (2048 tokens per clip; real 25165824).",
        f"LLM: {llm}, hidden 128, 2 layers, 2 heads x 64, 1 KV head, QK-norm, interleaved"
        f" M-RoPE section {text_config['rope_parameters']['mrope_section']},"
        f" rope_theta {text_config['rope_parameters']['rope_theta']:.0f}.",
        "Chat: Qwen3-VL-Instruct template (no tools, no <think>), no default system prompt.",
    ]


def _qwen3_tokenizer_ids(chat_template: str = QWEN3VL_CHAT_TEMPLATE, extra_tokens: tuple[str, ...] = ()):
    tokenizer = make_qwen_tokenizer(chat_template, extra_tokens)
    ids = _ids(tokenizer, QWEN_ADDED)
    # The same ids as the other Qwen fixtures.
    assert (ids["<|image_pad|>"], ids["<|video_pad|>"]) == (888, 889), ids
    return tokenizer, ids


def build_qwen3vl(out: Path) -> dict:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    tokenizer, ids = _qwen3_tokenizer_ids()
    text_config = _qwen3_text_config(tokenizer, ids)
    config = Qwen3VLConfig(
        text_config=text_config, vision_config=_qwen3_vision_config(), **_qwen_token_config(ids)
    )
    config.architectures = ["Qwen3VLForConditionalGeneration"]
    notes = _qwen3_notes(text_config, f"Qwen3 (dense, intermediate {LLM['intermediate_size']})")
    processor = _qwen3_processor(Qwen3VLProcessor, tokenizer)
    return _write(out, Qwen3VLForConditionalGeneration, config, processor, _qwen3_rename, ids, notes)


def build_qwen3vl_moe(out: Path) -> dict:
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration, Qwen3VLProcessor

    assert 2 * QWEN3_MOE["moe_intermediate_size"] != LLM["hidden_size"]
    tokenizer, ids = _qwen3_tokenizer_ids()
    text_config = _qwen3_text_config(tokenizer, ids, **QWEN3_MOE)
    config = Qwen3VLMoeConfig(
        text_config=text_config, vision_config=_qwen3_vision_config(), **_qwen_token_config(ids)
    )
    config.architectures = ["Qwen3VLMoeForConditionalGeneration"]
    e, i, h = QWEN3_MOE["num_experts"], QWEN3_MOE["moe_intermediate_size"], LLM["hidden_size"]
    notes = _qwen3_notes(
        text_config,
        f"Qwen3-MoE ({e} experts of {i}, top-{QWEN3_MOE['num_experts_per_tok']} normalised,"
        " every layer sparse)",
    )
    notes.append(
        f"Experts stored fused as in the hub checkpoint: mlp.experts.gate_up_proj [{e}, {h}, {2 * i}]"
        f" (gate half first), mlp.experts.down_proj [{e}, {i}, {h}]."
    )
    processor = _qwen3_processor(Qwen3VLProcessor, tokenizer)
    return _write(
        out, Qwen3VLMoeForConditionalGeneration, config, processor, _qwen3_rename, ids, notes,
        convert=_qwen3_moe_experts_to_hub,
    )


def _qwen35_text_config(tokenizer, ids, **moe) -> dict:
    """The hybrid LLM of the Qwen3.5 fixtures: the Qwen3 fixtures' LLM with a Gated DeltaNet
    (linear attention) layer, then a gated full-attention layer (real: 3 linear per full
    one), and M-RoPE on a quarter of each head."""
    config = _qwen3_text_config(tokenizer, ids, **moe)
    # Real 27B / 35B-A3B: head_dim 256, rotary on its first quarter (64), mrope_section
    # [11, 11, 10] (sum 32 = 64 / 2), interleaved.
    rotary = config["head_dim"] // 4
    mrope_section = [3, 3, 2]
    assert sum(mrope_section) == rotary // 2
    config["rope_parameters"].update(
        # real 1e7 over 64 rotary dims; over 16, so high a base leaves the height and
        # width channels little to see position with (their fastest pair turns 0.13 and
        # 0.018 rad per step; with 1e4, 0.32 and 0.1)
        rope_theta=10000.0,
        partial_rotary_factor=0.25,
        mrope_section=mrope_section,
    )
    config.update(
        layer_types=["linear_attention", "full_attention"],
        # Gated DeltaNet: 2 key heads, 4 value heads (real 16 / 32 or 48; two ranks of
        # tensor parallelism split them), head dims 64 (real 128; vLLM's CPU kernel takes
        # 64 or 128), causal conv of width 4 (real)
        linear_conv_kernel_dim=4,
        linear_key_head_dim=64,
        linear_value_head_dim=64,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        mamba_ssm_dtype="float32",  # as in the real config: the recurrent state in float32
        # 2 KV heads (real 4 of 24 or 32): the KV page per token then holds as much as a
        # recurrent state per 256 tokens, so vLLM's KV blocks stay 256 tokens (with 1: 512)
        num_key_value_heads=2,
    )
    return config


def _qwen35_vision_config() -> dict:
    vision = _qwen3_vision_config()
    del vision["deepstack_visual_indexes"]  # Qwen3.5's vision tower has no DeepStack
    return vision


def _qwen35_notes(text_config: dict, llm: str) -> list[str]:
    return [
        "ViT patch 16, temporal patch 2, spatial merge 2 (one token per 32x32 pixels), learned"
        " 48x48 position grid (2304) resampled per image, 2D rotary, hidden 64, 2 blocks; no DeepStack.",
        f"Images: shortest_edge {QWEN3_MIN_PIXELS} (real); longest_edge {QWEN3_MAX_PIXELS}"
        f" (2048 tokens). Videos: shortest_edge {QWEN3_VIDEO_MIN_PIXELS}; longest_edge"
        f" {QWEN3_VIDEO_MAX_PIXELS}.",
        f"LLM: {llm}, hidden 128; layer 0 Gated DeltaNet (2 key heads, 4 value heads, head dims 64,"
        " conv 4, recurrent state float32), layer 1 gated full attention (2 heads x 64, 2 KV heads,"
        f" QK-norm); rotary on a quarter of each head, interleaved M-RoPE section"
        f" {text_config['rope_parameters']['mrope_section']}, rope_theta"
        f" {text_config['rope_parameters']['rope_theta']:.0f} (real 1e7 over 64 rotary dims);"
        " no MTP layers.",
        "Chat: Qwen3.5 template (no tools), no default system prompt, the generation prompt opens"
        " a <think> block.",
    ]


def _qwen35_moe_experts_to_hub(name: str, tensor: torch.Tensor):
    # Qwen/Qwen3.5-35B-A3B stores each expert on its own (mlp.experts.{e}.gate_proj / up_proj
    # / down_proj), which transformers fuses on load (conversion_mapping "qwen3_5_moe_text"
    # = qwen2_moe's) into gate_up_proj [E, 2I, H] (gate half first) and down_proj [E, H, I].
    stem = name.rsplit(".", 1)[0]  # ...mlp.experts
    if name.endswith(".mlp.experts.gate_up_proj"):
        gate, up = tensor.chunk(2, dim=1)
        return {
            **{f"{stem}.{e}.gate_proj.weight": w for e, w in enumerate(gate)},
            **{f"{stem}.{e}.up_proj.weight": w for e, w in enumerate(up)},
        }
    if name.endswith(".mlp.experts.down_proj"):
        return {f"{stem}.{e}.down_proj.weight": w for e, w in enumerate(tensor)}
    return tensor


def build_qwen35(out: Path) -> dict:
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3VLProcessor

    tokenizer, ids = _qwen3_tokenizer_ids(QWEN35_CHAT_TEMPLATE, QWEN35_ADDED)
    text_config = _qwen35_text_config(tokenizer, ids)
    config = Qwen3_5Config(
        text_config=text_config, vision_config=_qwen35_vision_config(), **_qwen_token_config(ids)
    )
    config.architectures = ["Qwen3_5ForConditionalGeneration"]
    notes = _qwen35_notes(text_config, f"Qwen3.5 (dense, intermediate {LLM['intermediate_size']})")
    processor = _qwen3_processor(Qwen3VLProcessor, tokenizer, QWEN35_CHAT_TEMPLATE)
    return _write(out, Qwen3_5ForConditionalGeneration, config, processor, _qwen3_rename, ids, notes)


def build_qwen35_moe(out: Path) -> dict:
    from transformers import Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration, Qwen3VLProcessor

    tokenizer, ids = _qwen3_tokenizer_ids(QWEN35_CHAT_TEMPLATE, QWEN35_ADDED)
    moe = dict(
        num_experts=QWEN3_MOE["num_experts"],
        num_experts_per_tok=QWEN3_MOE["num_experts_per_tok"],
        moe_intermediate_size=QWEN3_MOE["moe_intermediate_size"],
        shared_expert_intermediate_size=QWEN3_MOE["moe_intermediate_size"],
    )
    text_config = _qwen35_text_config(tokenizer, ids, **moe)
    text_config.pop("intermediate_size")  # every layer is sparse: no dense MLP
    config = Qwen3_5MoeConfig(
        text_config=text_config, vision_config=_qwen35_vision_config(), **_qwen_token_config(ids)
    )
    config.architectures = ["Qwen3_5MoeForConditionalGeneration"]
    e, i = moe["num_experts"], moe["moe_intermediate_size"]
    notes = _qwen35_notes(
        text_config,
        f"Qwen3.5-MoE ({e} experts of {i}, top-{moe['num_experts_per_tok']}, plus a gated shared"
        f" expert of {i}; every layer sparse)",
    )
    notes.append("Experts stored one by one as in the hub checkpoint: mlp.experts.{e}.{gate,up,down}_proj.weight.")
    processor = _qwen3_processor(Qwen3VLProcessor, tokenizer, QWEN35_CHAT_TEMPLATE)
    return _write(
        out, Qwen3_5MoeForConditionalGeneration, config, processor, _qwen3_rename, ids, notes,
        convert=_qwen35_moe_experts_to_hub,
    )


# --------------------------------------------------------------------------- writing
def _write(out: Path, model_cls, config, processor, rename, ids, notes: list[str], convert=None, init=None) -> dict:
    from transformers import GenerationConfig

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    config.dtype = DTYPE
    torch.manual_seed(SEED)
    with torch.device("cpu"):
        model = model_cls(config).to(torch.float32).eval()
    if init is not None:  # weights the model's own initialisation leaves at zero
        with torch.no_grad():
            init(model)
    shapes = _save_weights(model, out, rename, convert)
    config.save_pretrained(out)
    processor.save_pretrained(out)
    gen = GenerationConfig(
        bos_token_id=config.get_text_config().bos_token_id,
        eos_token_id=config.get_text_config().eos_token_id,
        pad_token_id=config.get_text_config().pad_token_id,
    )
    gen.save_pretrained(out)

    n_params = sum(p.numel() for p in model.parameters())
    note = {
        "what": "Tiny test fixture with RANDOM weights. Not a real model; outputs are meaningless.",
        "generated_by": "scripts/make_fixtures.py",
        "architecture": config.architectures[0],
        "seed": SEED,
        "dtype": DTYPE,
        "parameters": n_params,
        "tensor_name_layout": "as in the real hub checkpoint",
        "notes": notes,
        "special_token_ids": ids,
        "tensors": len(shapes),
    }
    (out / "fixture.json").write_text(json.dumps(note, indent=2) + "\n")
    (out / "README.md").write_text(
        f"# {out.name} test fixture\n\n"
        f"A tiny `{config.architectures[0]}` with **random weights** (torch seed {SEED}, the\n"
        "transformers model's own initialisation), saved with the tensor names of the real hub\n"
        "checkpoint so that both vLLM and transformers load it. It is not a real model: its\n"
        "outputs are meaningless but depend on the image and the text. The tokenizer is a\n"
        "byte-level BPE trained on a fixed corpus. Real image geometry, tiny widths/depths.\n\n"
        + "".join(f"- {n}\n" for n in notes)
        + "\n"
        "Generated by `scripts/make_fixtures.py`; do not edit by hand, rerun the script.\n"
        "Details: `fixture.json`.\n"
    )
    return note


BUILDERS = {
    "llava-1.5": build_llava15,
    "llava-next": build_llava_next,
    "qwen2.5-vl": build_qwen25vl,
    "qwen2-vl": build_qwen2vl,
    "qwen3-vl": build_qwen3vl,
    "qwen3-vl-moe": build_qwen3vl_moe,
    "qwen3.5": build_qwen35,
    "qwen3.5-moe": build_qwen35_moe,
    "llava-onevision": build_llava_onevision,
    "gemma3": build_gemma3,
    "internvl": build_internvl,
}


def build(family: str, out: Path) -> dict:
    """Write ``family``'s fixture into the folder ``out`` (replaced); its fixture.json."""
    if family not in BUILDERS:
        raise KeyError(f"no fixture builder for {family!r}; known: {', '.join(BUILDERS)}")
    with _deterministic():
        return BUILDERS[family](Path(out))


@contextlib.contextmanager
def _deterministic():
    # byte-identical weights on every run of the same torch build
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
