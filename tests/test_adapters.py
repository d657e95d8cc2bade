"""Adapters of every supported family, checked on tiny random models against the actual token ids."""
from __future__ import annotations

import importlib
import inspect
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from narrowgate_utils.models import load, registry  # noqa: E402
from narrowgate_utils.models.base import Adapter  # noqa: E402
from narrowgate_utils.tiny import TINY_FAMILIES, build_tiny  # noqa: E402

torch.set_num_threads(1)

#: what the tiny builders must produce for one square image of the builder's IMAGE_SIZE:
#: image placeholder (None: Chameleon's VQ codes), [SOI], [EOI] (None: conventional), row
#: separator token, number of image content tokens and of row separators.
SPEC = {
    "chameleon": dict(image=None, soi="<racm3:break>", eoi="<eoss>", row=None, n_image=64, n_rows=0),
    "emu3": dict(image="<image>", soi="<|image start|>", eoi="<|image end|>", row="<image>", n_image=16, n_rows=4),
    "llava": dict(image="<image>", soi=None, eoi=None, row=None, n_image=16, n_rows=0),
    # 16 base features + a 4×4 unpadded grid; the newline feature closing each grid row (same id) is a row separator
    "llava_next": dict(image="<image>", soi=None, eoi=None, row="<image>", n_image=32, n_rows=4),
    "llava_onevision": dict(image="<image>", soi=None, eoi=None, row="<image>", n_image=32, n_rows=4),
    "pixtral": dict(image="[IMG]", soi=None, eoi="[IMG_END]", row="[IMG_BREAK]", n_image=16, n_rows=3),
    "janus": dict(image="<image_placeholder>", soi="<begin_of_image>", eoi="<end_of_image>", row=None, n_image=16,
                  n_rows=0),
    "qwen2_vl": dict(image="<|image_pad|>", soi="<|vision_start|>", eoi="<|vision_end|>", row=None, n_image=16,
                     n_rows=0),
    # 2×2 tiles + the global view, 4 features each; the rows of tiles end with "\n" and "\n\n" (two tokens:
    # checked in test_idefics3_tiles_and_row_separators); [EOI] closes the global view
    "idefics3": dict(image="<image>", soi="<fake_token_around_image>", eoi="<fake_token_around_image>", row=None,
                     n_image=20, n_rows=2),
}
TEXTS = ["this is a red circle", "what"]  # different lengths → the second row is left padded


def test_spec_covers_every_tiny_family() -> None:
    assert set(SPEC) == set(TINY_FAMILIES) == set(registry.SUPPORTED_FAMILIES)


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def adapter(request) -> Adapter:
    return build_tiny(request.param)


def square_image(family: str, seed: int = 0) -> np.ndarray:
    size = importlib.import_module(f"narrowgate_utils.tiny.{family}").IMAGE_SIZE
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def token_id(adapter: Adapter, token: str) -> int:
    return int(adapter.tokenizer.convert_tokens_to_ids(token))


def image_ids(adapter: Adapter) -> set[int]:
    spec = SPEC[adapter.family]
    if spec["image"] is None:  # Chameleon: BPE ids of VQ codes
        return set(adapter.image_token_ids)
    return {token_id(adapter, spec["image"])}


# ------------------------------------------------------------------------------------ layouts
@pytest.mark.parametrize("order", ["image_first", "text_first"])
def test_layout_matches_token_ids(adapter: Adapter, order: str) -> None:
    spec = SPEC[adapter.family]
    images = [square_image(adapter.family, 0), square_image(adapter.family, 1)]
    batch = adapter.build_batch(images, TEXTS, order=order)
    assert len(batch) == 2 and batch.order == order
    mask = batch.inputs["attention_mask"]
    for row, layout in enumerate(batch.layouts):
        ids = batch.input_ids[row].tolist()
        assert layout.seq_len == len(ids)
        assert layout.pad_offset == int((mask[row] == 0).sum())
        assert len(layout.image_positions) == spec["n_image"]
        assert all(ids[i] in image_ids(adapter) for i in layout.image_positions)
        assert min(layout.image_positions) >= layout.pad_offset
        # [SOI]
        if spec["soi"] is None:
            assert layout.soi is None
        else:
            assert ids[layout.soi] == token_id(adapter, spec["soi"])
            assert layout.soi < layout.first_image
        # [EOI]
        if spec["eoi"] is None:  # the first position after the image block (its last position at the end)
            assert layout.eoi_is_conventional
            block_end = max(layout.image_positions + layout.row_separators)
            assert layout.eoi == (block_end + 1 if order == "image_first" else block_end)
        else:
            assert not layout.eoi_is_conventional
            assert ids[layout.eoi] == token_id(adapter, spec["eoi"])
            assert layout.eoi > max(layout.image_positions + layout.row_separators)
        # row separators
        assert len(layout.row_separators) == spec["n_rows"]
        if spec["row"] is not None:
            assert all(ids[i] == token_id(adapter, spec["row"]) for i in layout.row_separators)
            assert not set(layout.row_separators) & set(layout.image_positions)
        # the text of this row sits where the order says
        text_ids = adapter.tokenizer(TEXTS[row], add_special_tokens=False)["input_ids"]
        where = layout.text_positions if order == "image_first" else layout.prompt_text_positions
        if order == "image_first" and layout.eoi_is_conventional:  # the conventional [EOI] is the first text token
            where = (layout.eoi, *where)
        assert [ids[i] for i in where][-len(text_ids):] == text_ids
        if order == "image_first":
            assert layout.text_positions == tuple(range(layout.eoi + 1, len(ids)))
        else:
            assert layout.eoi == len(ids) - 1 and layout.text_positions == ()


@pytest.mark.parametrize("order", ["image_first", "text_first"])
def test_left_padding_shifts_positions(adapter: Adapter, order: str) -> None:
    images = [square_image(adapter.family, 0), square_image(adapter.family, 1)]
    batch = adapter.build_batch(images, TEXTS, order=order)
    alone = adapter.build_batch(images[1:], TEXTS[1:], order=order).layouts[0]
    padded = batch.layouts[1]
    shift = padded.pad_offset
    assert shift == batch.input_ids.shape[1] - alone.seq_len > 0
    assert alone.pad_offset == 0
    assert padded.image_positions == tuple(i + shift for i in alone.image_positions)
    assert padded.eoi == alone.eoi + shift
    assert padded.row_separators == tuple(i + shift for i in alone.row_separators)
    assert padded.text_positions == tuple(i + shift for i in alone.text_positions)
    assert padded.prompt_text_positions == tuple(i + shift for i in alone.prompt_text_positions)
    assert (padded.soi is None) == (alone.soi is None)
    if alone.soi is not None:
        assert padded.soi == alone.soi + shift


def test_emu3_row_separators_are_end_of_line_codes() -> None:
    """Emu3 row separators share the <image> id; inside the model they become <|extra_200|>."""
    adapter = build_tiny("emu3")
    batch = adapter.build_batch([square_image("emu3")], ["what"])
    layout = batch.layouts[0]
    height, width = layout.extra["grid"]
    assert (height, width) == (4, 4)
    assert batch.input_ids[0, layout.extra["eof"]] == token_id(adapter, "<|extra_201|>")
    with torch.no_grad():
        codes = adapter.model.model.get_image_tokens(batch.inputs["pixel_values"], batch.inputs["image_sizes"])
    wrapper = layout.extra["image_meta"][-1]
    assert batch.input_ids[0, wrapper] == token_id(adapter, "<|image token|>")
    start = wrapper + 1  # the model writes codes[k] at position start + k
    assert len(codes) == height * (width + 1) == layout.extra["eof"] - start
    eol = token_id(adapter, "<|extra_200|>")
    assert [int(codes[i - start]) for i in layout.row_separators] == [eol] * height
    assert all(int(codes[i - start]) != eol for i in layout.image_positions)


def test_pixtral_row_separators_found() -> None:
    """The authors' code looked [IMG_BREAK] up under a wrong name; here every one is found."""
    adapter = build_tiny("pixtral")
    batch = adapter.build_batch([square_image("pixtral")], ["what"])
    ids = batch.input_ids[0].tolist()
    breaks = tuple(i for i, t in enumerate(ids) if t == token_id(adapter, "[IMG_BREAK]"))
    assert batch.layouts[0].row_separators == breaks and len(breaks) == 3
    assert batch.layouts[0].resolve("row_separators") == list(breaks)


@pytest.mark.parametrize("shape, grid", [((32, 32), (2, 2)), ((16, 32), (1, 2)), ((32, 12), (2, 1))])
def test_idefics3_tiles_and_row_separators(shape: tuple[int, int], grid: tuple[int, int]) -> None:
    """Longest edge to 64 px, 32 px tiles: one tag per tile, a newline per row of tiles, [EOI] after the global view."""
    adapter = build_tiny("idefics3")
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    batch = adapter.build_batch([image], ["what"])
    layout, tokens = batch.layouts[0], adapter.tokenizer.convert_ids_to_tokens(batch.input_ids[0].tolist())
    rows, cols = grid
    assert layout.extra["grid"] == grid and len(layout.image_positions) == 4 * (rows * cols + 1)
    assert [tokens[i] for i in layout.row_separators] == ["\n"] * (rows - 1) + ["\n\n"]
    tags = [f"<row_{r}_col_{c}>" for r in range(1, rows + 1) for c in range(1, cols + 1)] + ["<global-img>"]
    markers = layout.extra["tile_markers"]
    assert [tokens[i] for i in markers] == [t for tag in tags for t in ("<fake_token_around_image>", tag)]
    assert markers[0] == layout.soi and tokens[layout.eoi] == "<fake_token_around_image>" == tokens[layout.soi]
    span = layout.image_positions + layout.row_separators + markers[1:] + (layout.eoi,)
    assert sorted(span) == list(layout.image_span)
    with torch.no_grad():  # the model takes exactly one feature per <image> token
        features = adapter.model.model.get_image_features(batch.inputs["pixel_values"],
                                                          batch.inputs["pixel_attention_mask"]).pooler_output[0]
    assert len(features) == len(layout.image_positions)
    adapter.processor.image_processor.do_image_splitting = False
    try:  # one global view only: no tiles, no row separators
        single = adapter.build_batch([image], ["what"]).layouts[0]
    finally:
        adapter.processor.image_processor.do_image_splitting = True
    assert single.extra["grid"] == (0, 0) and single.row_separators == () and len(single.image_positions) == 4
    assert single.extra["tile_markers"] == (single.soi, single.soi + 1) and single.eoi == single.last_image + 1


@pytest.mark.parametrize("family", ["llava_next", "llava_onevision"])
@pytest.mark.parametrize("shape", [(32, 32), (20, 48), (64, 24)])
def test_anyres_newlines_are_row_separators(family: str, shape: tuple[int, int]) -> None:
    """The image_newline features the model packs after each grid row are the layout's row separators."""
    adapter = build_tiny(family)
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    batch = adapter.build_batch([image, square_image(family)], ["what", "this is a red circle"])
    with torch.no_grad():
        packed = adapter.model.model.get_image_features(batch.inputs["pixel_values"],
                                                        batch.inputs["image_sizes"]).pooler_output
    for row, layout in enumerate(batch.layouts):
        block = sorted(layout.image_positions + layout.row_separators)
        is_newline = torch.isclose(packed[row], adapter.model.model.image_newline.to(packed[row])).all(-1)
        assert len(block) == len(is_newline) and block == list(range(block[0], block[-1] + 1))
        assert layout.row_separators == tuple(block[0] + int(k) for k in torch.nonzero(is_newline).flatten())
        assert layout.row_separators[-1] == block[-1] and layout.last_image < layout.row_separators[-1]
        assert layout.eoi == block[-1] + 1


def test_onevision_newlines_after_downsampling() -> None:
    """Grids above the anyres_max_N budget are downsampled before the newlines are appended."""
    adapter = build_tiny("llava_onevision")
    adapter.model.config.vision_aspect_ratio = adapter.processor.vision_aspect_ratio = "anyres_max_1"
    batch = adapter.build_batch([np.zeros((64, 64, 3), dtype=np.uint8)], ["what"])
    layout = batch.layouts[0]
    # 16 base features + the 8x8 grid downsampled by sqrt(64 / 16) = 2 to 4x4, one newline per row
    assert len(layout.image_positions) == 16 + 16 and len(layout.row_separators) == 4
    with torch.no_grad():  # the model accepts exactly this many image tokens
        adapter.model(**batch.inputs)


def test_locate_without_image_size_counts_newlines_as_image() -> None:
    adapter = build_tiny("llava_next")
    batch = adapter.build_batch([square_image("llava_next")], ["what"])
    plain = adapter.locate(batch.input_ids[0], batch.inputs["attention_mask"][0])
    assert plain.row_separators == () and len(plain.image_positions) == 36
    with pytest.raises(ValueError, match="packs into"):
        adapter.locate(batch.input_ids[0], image_size=(64, 64))


def test_vocabulary_is_not_read_per_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """Special-token ids are looked up once per adapter, never through get_vocab (152k entries for OneVision)."""
    adapter = build_tiny("llava_onevision")
    adapter.build_batch([square_image("llava_onevision")], ["what"])
    calls = []
    monkeypatch.setattr(adapter.tokenizer, "get_vocab", lambda: calls.append(1) or {})
    for _ in range(3):
        batch = adapter.build_batch([square_image("llava_onevision")] * 2, ["what", "this is a red circle"])
        adapter.prompt_for("vqa", question="what")
    assert calls == [] and len(batch.layouts[0].row_separators) == 4
    assert "explicit_eoi_id" in vars(adapter)  # looked up once, then cached


# ------------------------------------------------------------------------------------ model
def test_forward_and_module_paths(adapter: Adapter) -> None:
    images = [square_image(adapter.family, 0), square_image(adapter.family, 1)]
    batch = adapter.build_batch(images, TEXTS)
    seen: list[object] = []
    handle = adapter.layers[0].register_forward_hook(lambda module, args, output: seen.append(output))
    try:
        with torch.no_grad():
            out = adapter.model(**batch.inputs, output_hidden_states=True)
    finally:
        handle.remove()
    assert adapter.num_layers == 4 and len(out.hidden_states) == adapter.num_layers + 1
    assert out.hidden_states[-1].shape == (2, batch.input_ids.shape[1], 64)
    assert len(seen) == 1 and isinstance(seen[0], tuple) == adapter.layer_returns_tuple
    for layer in range(adapter.num_layers):
        assert isinstance(adapter.attention(layer), torch.nn.Module)
        assert isinstance(adapter.input_layernorm(layer), torch.nn.Module)
    assert adapter.attention(-1) is adapter.layers[3].self_attn


def test_named_positions(adapter: Adapter) -> None:
    layout = adapter.build_batch([square_image(adapter.family)], TEXTS[:1]).layouts[0]
    assert layout.resolve("eoi") == [layout.eoi]
    assert layout.resolve("last_image") == [layout.image_positions[-1]]
    assert layout.resolve("image") == list(layout.image_positions)
    assert layout.resolve("text") == list(range(layout.eoi + 1, layout.seq_len))
    assert layout.resolve("text_last") == [layout.seq_len - 1]
    assert layout.resolve("image_index:1") == [layout.image_positions[0]]
    draw = layout.resolve("random_image:3", np.random.default_rng(7))
    assert draw == layout.resolve("random_image:3", np.random.default_rng(7))
    assert len(set(draw)) == 3 and set(draw) <= set(layout.image_positions) and draw == sorted(draw)


# ------------------------------------------------------------------------------------ errors
def test_prompt_without_placeholder_is_rejected(adapter: Adapter) -> None:
    with pytest.raises(ValueError, match="placeholder|image block"):
        adapter.encode([square_image(adapter.family)], ["this is a red circle"])


def test_locate_without_image_tokens(adapter: Adapter) -> None:
    ids = adapter.tokenizer("this is a red circle", return_tensors="pt")["input_ids"][0]
    with pytest.raises(ValueError, match="Image span not found"):
        adapter.locate(ids)


def test_bad_arguments(adapter: Adapter) -> None:
    image = square_image(adapter.family)
    with pytest.raises(ValueError, match="out of range"):
        adapter.check_layer(99)
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        adapter.build_batch([image, image], ["what"])
    with pytest.raises(ValueError, match="empty"):
        adapter.build_batch([], [])
    with pytest.raises(ValueError, match="Unknown prompt order 'sideways'"):
        adapter.build_batch([image], ["what"], order="sideways")


def test_unknown_model_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="'no-such/model' is neither a local directory nor in the Hugging Face"):
        load("no-such/model")


def test_unsupported_family_lists_supported() -> None:
    from transformers import BertConfig

    with pytest.raises(ValueError, match="Model type 'bert' is not supported") as error:
        registry.family_of(BertConfig())
    assert all(family in str(error.value) for family in registry.SUPPORTED_FAMILIES)
    with pytest.raises(ValueError, match="Unknown model family 'bert'"):
        registry.adapter_class("bert")


# ------------------------------------------------------------------------------------ loading
@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory):
    """Save each tiny model + processor once; returns family -> (original adapter, directory)."""
    cache: dict[str, tuple[Adapter, str]] = {}

    def save(family: str, adapter: Adapter | None = None) -> tuple[Adapter, str]:
        if family not in cache:
            adapter = adapter or build_tiny(family)
            path = tmp_path_factory.mktemp(family)
            adapter.model.save_pretrained(path)
            adapter.processor.save_pretrained(path)
            cache[family] = (adapter, str(path))
        return cache[family]

    return save


def assert_same_model(original: Adapter, loaded: Adapter, family: str) -> None:
    image = square_image(family if family in TINY_FAMILIES else "qwen2_vl")
    x = original.build_batch([image], ["what"])
    y = loaded.build_batch([image], ["what"])
    assert torch.equal(x.input_ids, y.input_ids)
    assert x.layouts == y.layouts
    with torch.no_grad():
        # load() runs vision towers with sdpa (the tiny originals are eager throughout): same weights,
        # another attention kernel, so equal to float32 rounding rather than bit for bit
        torch.testing.assert_close(original.model(**x.inputs).logits, loaded.model(**y.inputs).logits,
                                   rtol=1e-5, atol=1e-6)


def test_round_trip(adapter: Adapter, saved) -> None:
    original, path = saved(adapter.family, adapter)
    loaded = load(path)
    assert type(loaded) is type(original)
    assert type(loaded.model) is type(original.model)
    assert loaded.model.config._attn_implementation == "eager"
    assert_same_model(original, loaded, adapter.family)


def test_qwen2_5_vl_round_trip(saved) -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from narrowgate_utils.tiny.qwen2_vl import build

    original, path = saved("qwen2_5_vl", build(0, version="2.5"))
    loaded = load(path)
    assert type(loaded).__name__ == "Qwen2VLAdapter" and isinstance(loaded.model, Qwen2_5_VLForConditionalGeneration)
    assert_same_model(original, loaded, "qwen2_5_vl")


def test_qwen_4d_mask_needs_rope_position_ids() -> None:
    """With a 4D additive mask the Qwen forward must be given M-RoPE position_ids."""
    adapter = build_tiny("qwen2_vl")
    images = [square_image("qwen2_vl", 0), square_image("qwen2_vl", 1)]
    inputs = adapter.build_batch(images, TEXTS).inputs
    mask2d = inputs["attention_mask"]
    n = mask2d.shape[1]
    allowed = torch.tril(torch.ones(n, n, dtype=torch.bool))[None] & mask2d[:, None, :].bool()
    mask4d = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]
    with torch.no_grad():
        reference = adapter.model(**inputs).logits
        position_ids = adapter.rope_position_ids(inputs)
        with_4d = adapter.model(**{**inputs, "attention_mask": mask4d, "position_ids": position_ids}).logits
    keep = mask2d.bool()
    assert position_ids.shape == (3, 2, n)
    assert torch.allclose(reference[keep], with_4d[keep], atol=1e-5)
    with pytest.raises(ValueError, match="2D attention_mask"):
        adapter.rope_position_ids({**inputs, "attention_mask": mask4d})


def test_smolvlm_loads_as_idefics3_without_its_processor(saved) -> None:
    """SmolVLM2 (model_type smolvlm) is the idefics3 family. Without torchvision its SmolVLMProcessor
    cannot load (no video processor): the adapter wraps the image processor in Idefics3Processor."""
    import json
    from pathlib import Path

    from transformers import SmolVLMForConditionalGeneration

    from narrowgate_utils.tiny.idefics3 import build

    original, path = saved("smolvlm", build(0, variant="smolvlm"))
    config_file = Path(path) / "processor_config.json"
    config = json.loads(config_file.read_text())
    config["processor_class"] = "SmolVLMProcessor"  # as on the hub checkpoints
    config_file.write_text(json.dumps(config))
    loaded = load(path)
    assert loaded.family == "idefics3" and isinstance(loaded.model, SmolVLMForConditionalGeneration)
    assert loaded.has_image_pipeline()
    assert_same_model(original, loaded, "idefics3")


def test_load_rejects_bad_dtype_and_device(saved) -> None:
    _, path = saved("chameleon")
    with pytest.raises(ValueError, match="Unknown dtype 'float8'"):
        load(path, dtype="float8")
    with pytest.raises(ValueError, match="Unknown device 'gpu0'"):
        load(path, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            load(path, device="cuda")


def test_device_auto_means_device_map_auto(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import ChameleonForConditionalGeneration

    original, path = saved("chameleon")
    seen: dict = {}
    real = ChameleonForConditionalGeneration.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(ChameleonForConditionalGeneration, "from_pretrained", classmethod(spy))
    sharded = load(path, device="auto")  # accelerate: every visible GPU, else the CPU
    assert seen["device_map"] == "auto"
    if not torch.cuda.is_available():  # everything on the CPU: the very same model
        assert_same_model(original, sharded, "chameleon")


def test_load_is_safe_by_default(saved, tmp_path) -> None:
    assert inspect.signature(load).parameters["trust_remote_code"].default is False
    original, path = saved("llava")
    # a checkpoint with only pickled (.bin) weights must not be loaded
    original.model.config.save_pretrained(tmp_path)
    original.processor.save_pretrained(tmp_path)
    torch.save(original.model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises((OSError, ValueError), match="safetensors"):
        load(str(tmp_path))
