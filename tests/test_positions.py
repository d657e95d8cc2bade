"""Named positions: ``abs:N`` (the paper's absolute token numbering) and ``image_index:N``."""
from __future__ import annotations

import pytest
from tiny_models import TEXTS, images, tiny

from narrowgate_utils.layout import PositionOutOfRange, TokenLayout


def chameleon_7b_layout(pad: int = 0) -> TokenLayout:
    """Chameleon-7B at 512 px: BOS, [SOI], 1024 VQ codes, [EOI] (+ 5 text tokens), left-padded by ``pad``."""
    return TokenLayout(seq_len=pad + 1032, image_positions=tuple(range(pad + 2, pad + 1026)), eoi=pad + 1026,
                       soi=pad + 1, text_positions=tuple(range(pad + 1027, pad + 1032)),
                       prompt_text_positions=(pad,), pad_offset=pad)


def test_abs_counts_from_the_first_non_pad_token():
    for pad in (0, 3):
        layout = chameleon_7b_layout(pad)
        assert layout.resolve("abs:0") == [pad]  # BOS
        assert layout.resolve("abs:1") == [layout.soi]
        # the paper's "32nd" Chameleon-7B token is absolute position 32: the 31st VQ code
        assert layout.resolve("abs:32") == layout.resolve("image_index:31") == [pad + 32]
        assert layout.resolve("abs:1031") == [layout.text_last]
        with pytest.raises(PositionOutOfRange, match="0..1031"):
            layout.resolve("abs:1032")
    for bad in ("abs:-1", "abs:x", "abs:"):
        with pytest.raises(ValueError, match="non-negative integer"):
            chameleon_7b_layout().resolve(bad)
    with pytest.raises(PositionOutOfRange, match="1024 content tokens"):
        chameleon_7b_layout().resolve("image_index:1025")
    assert issubclass(PositionOutOfRange, ValueError)


def test_abs_1025_of_pixtral_counts_bos_and_row_breaks():
    """Pixtral at 512 px: BOS, then 32 rows of 32 [IMG] each closed by [IMG_BREAK] ([IMG_END] last)."""
    rows, width = 32, 32
    content = tuple(1 + r * (width + 1) + c for r in range(rows) for c in range(width))
    breaks = tuple(1 + r * (width + 1) + width for r in range(rows - 1))
    layout = TokenLayout(seq_len=1060, image_positions=content, eoi=1 + rows * (width + 1) - 1,
                         row_separators=breaks, text_positions=tuple(range(1057, 1060)), prompt_text_positions=(0,))
    assert layout.eoi == 1056 and layout.row_separators[0] == 33  # the authors' [EOL]s: 33, 66, ...
    (position,) = layout.resolve("abs:1025")
    assert position == 1025 and position in content
    assert layout.resolve("image_index:994") == [1025]  # last row, second column


def test_abs_selects_the_same_token_in_every_row_of_a_left_padded_batch():
    adapter = tiny("chameleon")
    picture = images("chameleon", 1)[0]
    batch = adapter.build_batch([picture, picture], TEXTS)  # same image, texts of different length
    ids, layouts = batch.input_ids, batch.layouts
    assert layouts[0].pad_offset != layouts[1].pad_offset
    prefix = min(layout.eoi - layout.pad_offset for layout in layouts) + 1
    for n in range(prefix):
        positions = batch.positions(f"abs:{n}")
        assert [p - layout.pad_offset for (p,), layout in zip(positions, layouts)] == [n, n]
        assert ids[0, positions[0][0]] == ids[1, positions[1][0]]
    assert batch.positions(f"abs:{layouts[0].first_image - layouts[0].pad_offset}") == [[l.first_image] for l in layouts]
    shortest = min(layout.seq_len - layout.pad_offset for layout in layouts)
    with pytest.raises(PositionOutOfRange):
        batch.positions(f"abs:{shortest}")


def test_idefics3_positions_skip_tile_markers_and_row_breaks():
    """Idefics3 (2×2 tiles of 4 features + the global view): ``image_index`` counts <image> features only,
    ``abs:1`` is [SOI] right after the BOS, in every row of a left-padded batch."""
    adapter = tiny("idefics3")
    batch = adapter.build_batch(images("idefics3", 2), TEXTS)
    assert batch.layouts[0].pad_offset != batch.layouts[1].pad_offset
    for layout in batch.layouts:
        first = layout.first_image
        assert layout.resolve("abs:1") == [layout.soi] == [first - 2]  # BOS, [SOI], <row_1_col_1>, features
        assert layout.resolve("image_index:5") == [first + 4 + 2]  # tile (1, 2): after its opener and tag
        assert layout.resolve("image_index:9") == [first + 2 * (4 + 2) + 1]  # row 2: after "\n", opener, tag
        assert layout.resolve("image_index:17") == [layout.row_separators[-1] + 3]  # the global view
        assert layout.resolve("image_index:20") == [layout.eoi - 1]
