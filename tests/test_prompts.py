"""Prompt templates per family, the toy models' plain prompts, answer clean-up and the fixed image size."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from narrowgate_utils.data import toy  # noqa: E402
from narrowgate_utils.models import load  # noqa: E402
from narrowgate_utils.models.base import CAPTION_PROMPT, VQA_INSTRUCTIONS, Adapter  # noqa: E402
from narrowgate_utils.tiny import TINY_FAMILIES, build_tiny  # noqa: E402
from tiny_models import images  # noqa: E402

torch.set_num_threads(1)

QUESTION = "What is this?"
SHORT_VQA = QUESTION + "\nAnswer the question using a single word or phrase. Answer:"
BLOCK_VQA = QUESTION + "\n" + VQA_INSTRUCTIONS
QWEN_TURN = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
#: family -> (VQA prompt, caption prompt) of the real checkpoints, exactly as sent to the processor
EXPECTED = {
    "chameleon": (f"<image>{BLOCK_VQA}<reserved08706>", f"<image>{CAPTION_PROMPT}"),
    "emu3": (f"You are a helpful assistant. USER: <image>{SHORT_VQA} ASSISTANT:",
             f"You are a helpful assistant. USER: <image>{CAPTION_PROMPT} ASSISTANT:"),
    "llava": (f"USER: <image>\n{SHORT_VQA} ASSISTANT:", f"USER: <image>\n{CAPTION_PROMPT} ASSISTANT:"),
    "llava_next": (f"USER: <image>\n{SHORT_VQA} ASSISTANT:", f"USER: <image>\n{CAPTION_PROMPT} ASSISTANT:"),
    "llava_onevision": (f"<|im_start|>user <image>\n{SHORT_VQA}<|im_end|><|im_start|>assistant\n",
                        f"<|im_start|>user <image>\n{CAPTION_PROMPT}<|im_end|><|im_start|>assistant\n"),
    "pixtral": (f"<s>[INST][IMG]{BLOCK_VQA}[/INST]", f"<s>[INST][IMG]{CAPTION_PROMPT}[/INST]"),
    "janus": (f"<|User|>: <image_placeholder>\n{SHORT_VQA}\n\n<|Assistant|>:",
              f"<|User|>: <image_placeholder>\n{CAPTION_PROMPT}\n\n<|Assistant|>:"),
    "qwen2_vl": (QWEN_TURN.format(f"<|vision_start|><|image_pad|><|vision_end|>{SHORT_VQA}"),
                 QWEN_TURN.format(f"<|vision_start|><|image_pad|><|vision_end|>{CAPTION_PROMPT}")),
    # SmolVLM's template opens with its BOS <|im_start|>, which its tokenizer does not add
    "idefics3": (f"<|im_start|>User:<image>{SHORT_VQA}<end_of_utterance>\nAssistant:",
                 f"<|im_start|>User:<image>{CAPTION_PROMPT}<end_of_utterance>\nAssistant:"),
}
#: the plain image placeholder of each family (class prompts, analysis prompts)
PLAIN_IMAGE = {"chameleon": "<image>", "emu3": "<image>", "llava": "<image>", "llava_next": "<image>",
               "llava_onevision": "<image>", "pixtral": "<s>[IMG]", "janus": "<image_placeholder>",
               "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>", "idefics3": "<|im_start|><image>"}
#: the BOS that prompts start with where the tokenizer does not add it
PROMPT_BOS = {"pixtral": "<s>", "idefics3": "<|im_start|>"}


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def adapter(request) -> Adapter:
    return build_tiny(request.param)


def test_expected_covers_every_family() -> None:
    assert set(EXPECTED) == set(PLAIN_IMAGE) == set(TINY_FAMILIES)


def test_vqa_and_caption_templates(adapter: Adapter) -> None:
    vqa, caption = EXPECTED[adapter.family]
    assert not adapter.toy
    assert adapter.prompt_for("vqa", question=QUESTION) == vqa
    assert adapter.prompt_for("caption") == caption
    text = adapter.task_prompt("vqa", question=QUESTION)
    assert adapter.format_prompt(text, chat=adapter.uses_chat("vqa")) == vqa
    assert adapter.format_prompt(CAPTION_PROMPT, chat=adapter.uses_chat("caption")) == caption


def test_class_prompts_are_plain_completions(adapter: Adapter) -> None:
    image = PLAIN_IMAGE[adapter.family]
    assert adapter.prompt_for("class") == image + "This animal is a"
    assert adapter.prompt_for("class", dataset="toy") == image + "This shape is a"
    assert adapter.prompt_for("patch") == image + "This animal is a"  # only Chameleon-34B differs
    bos = PROMPT_BOS.get(adapter.family, "")
    assert adapter.format_prompt("what", "text_first") == bos + "what" + adapter.image_prompt


def test_chameleon_34b_patching_prompt() -> None:
    adapter = build_tiny("chameleon")
    config = adapter.text_config
    saved = config.num_hidden_layers, config.hidden_size
    config.num_hidden_layers, config.hidden_size = 48, 8192
    try:
        assert adapter.is_34b
        assert adapter.prompt_for("patch") == ("<image>Answer the question using a single word, number, or short "
                                               "phrase. This animal is a")
        assert adapter.prompt_for("class") == "<image>This animal is a"
    finally:
        config.num_hidden_layers, config.hidden_size = saved


def test_llava_next_uses_the_processor_chat_template() -> None:
    adapter = build_tiny("llava_next")
    adapter.processor.chat_template = ("{% for m in messages %}[INST] {% for c in m['content'] %}{% if c['type'] == "
                                       "'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} [/INST]"
                                       "{% endfor %}")
    try:
        assert adapter.prompt_for("caption") == f"[INST] <image>\n{CAPTION_PROMPT} [/INST]"
    finally:
        adapter.processor.chat_template = None


def test_prompt_override() -> None:
    adapter = build_tiny("pixtral")
    assert adapter.prompt_for("vqa", question="Why?", prompt="Q: {question} A:") == "<s>[INST][IMG]Q: Why? A:[/INST]"
    assert adapter.prompt_for("class", prompt="It is a") == "<s>[IMG]It is a"
    # an override holding the image placeholder is a complete prompt, used as it is
    assert adapter.prompt_for("vqa", question="Why?", prompt="[IMG]{question}") == "[IMG]Why?"
    with pytest.raises(ValueError, match="no '\\{question\\}' field"):
        adapter.prompt_for("vqa", question="Why?", prompt="Answer:")
    with pytest.raises(ValueError, match="needs question="):
        adapter.task_prompt("vqa")
    with pytest.raises(ValueError, match="'vqa' task only"):
        adapter.task_prompt("caption", question="Why?")
    with pytest.raises(ValueError, match="Unknown prompt task 'poem'"):
        adapter.prompt_for("poem")
    with pytest.raises(ValueError, match="No class prompt for dataset 'coco'"):
        adapter.task_prompt("class", dataset="coco")
    with pytest.raises(ValueError, match="Unknown prompt order 'sideways'"):
        adapter.format_prompt("what", "sideways")


def test_chat_prompts_build_batches(adapter: Adapter) -> None:
    """Complete prompts pass through build_batch unchanged; chat=True there is the same prompt."""
    image = images(adapter.family, 1)[0]
    full = adapter.build_batch([image], [adapter.prompt_for("caption")])
    chat = adapter.build_batch([image], [CAPTION_PROMPT], chat=adapter.uses_chat("caption"))
    assert torch.equal(full.input_ids, chat.input_ids)
    assert full.layouts == chat.layouts
    assert full.layouts[0].eoi < full.layouts[0].seq_len


def test_chameleon_chat_mode_ends_with_the_separator() -> None:
    adapter = build_tiny("chameleon")
    batch = adapter.build_batch([images("chameleon", 1)[0]], [adapter.prompt_for("vqa", question="what")])
    assert int(batch.input_ids[0, -1]) == adapter.token_id("<reserved08706>")


def test_idefics3_text_first_turn_has_the_template_space() -> None:
    """SmolVLM's template writes 'User:' before an image and 'User: ' before text."""
    adapter = build_tiny("idefics3")
    turn = adapter.format_prompt("what", "text_first", chat=True)
    assert turn == "<|im_start|>User: what<image><end_of_utterance>\nAssistant:"
    assert adapter.clean_answer("a dog<end_of_utterance>\nUser: and?") == "a dog"
    assert adapter.clean_answer("red. User: more") == "red."


def test_pixtral_prompts_start_with_bos() -> None:
    adapter = build_tiny("pixtral")
    batch = adapter.build_batch([images("pixtral", 1)[0]], ["what"])
    assert int(batch.input_ids[0, 0]) == adapter.tokenizer.bos_token_id
    assert batch.layouts[0].prompt_text_positions == (0,)


def test_clean_answer() -> None:
    llava, qwen = build_tiny("llava"), build_tiny("qwen2_vl")
    assert llava.clean_answer("  Two dogs.\nUSER: and now?") == "Two dogs."
    assert llava.clean_answer("\n\nA dog on a couch. USER: more") == "A dog on a couch."
    assert llava.clean_answer("yes ASSISTANT: no") == "yes"
    assert qwen.clean_answer("red<|im_end|><|im_start|>user") == "red"
    assert llava.clean_answer("") == ""


@pytest.mark.parametrize("family", ["chameleon", "llava"])
def test_toy_checkpoints_keep_plain_prompts(family: str, tmp_path) -> None:
    """A checkpoint with the toy metadata file gets today's plain toy prompts, never a chat format."""
    original = build_tiny(family)
    original.model.save_pretrained(tmp_path)
    original.processor.save_pretrained(tmp_path)
    (tmp_path / "narrowgate_toy.json").write_text(json.dumps({"name": "toy-test"}))
    adapter = load(str(tmp_path))
    assert adapter.toy and not adapter.uses_chat("vqa") and not adapter.uses_chat("caption")
    question = "What color is the shape?"
    assert adapter.prompt_for("vqa", question=question) == "<image>" + toy.VQA_PROMPT.format(question=question)
    assert adapter.prompt_for("caption") == "<image>" + toy.CAPTION_PROMPT
    assert adapter.prompt_for("class") == "<image>" + toy.CLASS_PROMPT
    assert adapter.format_prompt("x", chat=True) == "<image>x"
    assert adapter.clean_answer("red\nred") == "red"


def test_image_size_resizes_before_the_processor() -> None:
    adapter = build_tiny("pixtral")  # native resolution: the number of patches follows the image size
    image = np.random.default_rng(0).integers(0, 256, (16, 32, 3), dtype=np.uint8)  # 2×4 patches of 8 px
    native = adapter.build_batch([image], ["what"]).layouts[0]
    square = adapter.build_batch([image], ["what"], image_size=24).layouts[0]
    assert len(native.image_positions) == 2 * 4 and len(native.row_separators) == 1
    assert len(square.image_positions) == 3 * 3 and len(square.row_separators) == 2
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ValueError, match="image_size must be a positive int"):
            adapter.build_batch([image], ["what"], image_size=bad)


def test_emu3_image_size_sets_the_pixel_budget() -> None:
    adapter = build_tiny("emu3")
    image_processor = adapter.processor.image_processor
    budget = image_processor.min_pixels, image_processor.max_pixels
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    layout = adapter.build_batch([image], ["what"], image_size=64).layouts[0]
    assert layout.extra["grid"] == (64 // 8, 64 // 8)
    assert (image_processor.min_pixels, image_processor.max_pixels) == budget
    assert adapter.build_batch([image], ["what"]).layouts[0].extra["grid"] == (4, 4)
