"""Stand-in checkpoints: tiny random models whose real processors give the real token layouts.

Every stand-in is written with ``write_standin``, loaded back with ``models.load`` like a user's
checkpoint directory, and fed one batch of a landscape, a portrait and a square natural-size
image; the token counts per row must follow the real checkpoint's rule (worked out below by
hand, independently of the processors).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from narrowgate_utils import models
from narrowgate_utils.cli import main
from narrowgate_utils.models.registry import family_of
from narrowgate_utils.standin import LANGUAGE_MODEL, STANDIN_NAMES, STANDINS, build_standin, write_standin
from standin_fixtures import IMAGE_SIZES, natural_image

#: (image content tokens, row separators) of each stand-in for IMAGE_SIZES = 640x480, 333x500, 512x512
EXPECTED_LAYOUTS = {
    # short side to 512, centre crop 512x512, 16x VQ downsampling: 32x32 codes whatever the input
    "chameleon": [(1024, 0)] * 3,
    # resized to multiples of 8 inside 512²..1024² pixels, one code per 8x8 pixels plus a separator per row:
    # 640x480 stays (60 rows of 80); 333x500 is below 512² so it is scaled by sqrt(512²/(333·500)) and rounded
    # up to 424x632 (79 rows of 53); 512x512 gives 64 rows of 64
    "emu3": [(4800, 60), (4187, 79), (4096, 64)],
    # CLIP ViT-L/14 at 336 px: 24x24 features (the CLS feature is dropped)
    "llava": [(576, 0)] * 3,
    # 576 base features + the unpadded grid of the best pinpoint, a newline feature per grid row:
    # 640x480 -> 672x672 (48x48 grid, 36 content rows) = 576 + 36·48; 333x500 -> 672x336 (48x24 grid, 36 rows)
    # = 576 + 36·24; 512x512 -> 672x672, all 48 rows = 576 + 48·48
    "llava_next": [(576 + 36 * 48, 36), (576 + 36 * 24, 36), (576 + 48 * 48, 48)],
    # 729 base features (SigLIP 384/14: 27x27) + unpadded grid of 384 px tiles with newlines:
    # 640x480 -> 768x768 (54x54, 40 rows); 333x500 -> 768x384 (54x27, 40 rows); 512x512 -> 768x768 (54 rows)
    "llava_onevision": [(729 + 40 * 54, 40), (729 + 40 * 27, 40), (729 + 54 * 54, 54)],
    # longest edge <= 1024 (all three fit), 16 px patches: rows x cols [IMG], an [IMG_BREAK] after all rows but the last
    "pixtral": [(30 * 40, 29), (32 * 21, 31), (32 * 32, 31)],
    # pad to square, resize to 384 px, 16 px patches: 24x24
    "janus": [(576, 0)] * 3,
    # sides rounded to multiples of 28 (14 px patches merged 2x2): 476x644 -> 17x23, 504x336 -> 18x12, 504x504 -> 18x18
    "qwen2_vl": [(17 * 23, 0), (18 * 12, 0), (18 * 18, 0)],
    "qwen2_5_vl": [(17 * 23, 0), (18 * 12, 0), (18 * 18, 0)],
    # longest edge to 1536, then sides up to multiples of 384: 640x480 -> 1536x1152 (3 rows x 4 tiles), 333x500 ->
    # 1022x1536 -> 1152x1536 (4 rows x 3 tiles), 512x512 -> 4x4 tiles; 81 features per tile and for the global view
    "idefics3": [(81 * (12 + 1), 3), (81 * (12 + 1), 4), (81 * (16 + 1), 4)],
}
TEXT = "This animal is a"


@pytest.fixture(scope="module")
def standin_dirs(tmp_path_factory) -> dict[str, str]:
    """Every stand-in written once into a temporary folder named after it."""
    root = tmp_path_factory.mktemp("standins")
    return {name: str(write_standin(name, root / name)) for name in STANDIN_NAMES}


def mixed_images() -> list:
    return [natural_image(size, (90, 60, 30), seed=k) for k, size in enumerate(IMAGE_SIZES)]


def test_every_supported_family_has_a_standin():
    families = {family_of(build_standin(name).model.config) for name in ("qwen2_vl", "qwen2_5_vl")}
    assert families == {"qwen2_vl"}, "Qwen2.5-VL is the qwen2_vl family"
    assert set(EXPECTED_LAYOUTS) == set(STANDIN_NAMES)
    assert set(models.SUPPORTED_FAMILIES) <= set(STANDIN_NAMES)


@pytest.mark.parametrize("name", STANDIN_NAMES)
def test_standin_loads_with_the_real_layouts(standin_dirs, name):
    adapter = models.load(standin_dirs[name])
    assert adapter.family == family_of(adapter.model.config) == ("qwen2_vl" if name == "qwen2_5_vl" else name)
    assert adapter.num_layers == LANGUAGE_MODEL["num_hidden_layers"]
    assert adapter.checkpoint_dir is not None and not adapter.toy
    batch = adapter.build_batch(mixed_images(), [TEXT] * len(IMAGE_SIZES))
    counts = [(len(layout.image_positions), len(layout.row_separators)) for layout in batch.layouts]
    assert counts == EXPECTED_LAYOUTS[name]
    ids = batch.inputs["input_ids"]
    for row, layout in enumerate(batch.layouts):
        assert layout.eoi > max(layout.image_positions), "[EOI] follows the image"
        assert set(layout.row_separators).isdisjoint(layout.image_positions)
        assert len(layout.text_positions) > 0, "the class prompt follows the image"
        assert layout.seq_len == ids.shape[1]
    with torch.no_grad():
        logits = adapter.model(**batch.inputs).logits
    assert logits.shape[:2] == ids.shape and torch.isfinite(logits).all()


def test_pixtral_rows_are_closed_by_the_real_tokens(standin_dirs):
    adapter = models.load(standin_dirs["pixtral"])
    batch = adapter.build_batch(mixed_images()[:1], [TEXT])
    layout, ids = batch.layouts[0], batch.inputs["input_ids"][0]
    tokens = adapter.tokenizer.convert_ids_to_tokens(ids.tolist())
    assert tokens[0] == "<s>", "Pixtral's tokenizer adds no BOS: the adapter writes it"
    assert {tokens[i] for i in layout.row_separators} == {"[IMG_BREAK]"} and tokens[layout.eoi] == "[IMG_END]"
    row_starts = np.diff([layout.image_positions[0] - 1, *layout.row_separators])
    assert set(row_starts) == {41}, "40 [IMG] per row, then [IMG_BREAK]"


def test_emu3_spells_its_grid_in_single_digits(standin_dirs):
    adapter = models.load(standin_dirs["emu3"])
    batch = adapter.build_batch(mixed_images()[:1], [TEXT])
    layout, ids = batch.layouts[0], batch.inputs["input_ids"][0]
    assert layout.extra["grid"] == (60, 80)
    meta = adapter.tokenizer.convert_ids_to_tokens([int(ids[i]) for i in layout.extra["image_meta"]])
    assert meta == ["6", "##0", "*", "8", "##0", "<|image token|>"], "Emu3 writes '60*80' digit by digit"


@pytest.mark.parametrize("name", STANDIN_NAMES)
def test_saved_files_name_the_real_classes(standin_dirs, name):
    spec = STANDINS[name]
    config = json.loads((Path(standin_dirs[name]) / "processor_config.json").read_text())
    assert config["processor_class"] == spec.processor_class
    assert config["image_processor"]["image_processor_type"] == spec.image_processor_type
    tokenizer = models.load(standin_dirs[name]).tokenizer
    assert all(len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1 for token in spec.chat_tokens)
    assert (tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id) == spec.adds_bos


def test_cli_writes_a_loadable_standin(tmp_path, capsys):
    assert main(["standin", "llava", str(tmp_path / "llava")]) == 0
    assert "llava-hf/llava-1.5-7b-hf" in capsys.readouterr().out
    assert models.load(tmp_path / "llava").family == "llava"


def test_unknown_standin_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="No stand-in for 'gpt2'"):
        write_standin("gpt2", tmp_path / "x")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="not a folder"):
        write_standin("llava", tmp_path / "file")
