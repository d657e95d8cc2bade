"""VQA answer normalisation and accuracy (official VQA evaluation behaviour)."""
import numpy as np
import pytest

from narrowgate_utils.metrics import normalize_vqa_answer, vqa_accuracy, vqa_accuracy_batch


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two.", "2"),            # period stripped, lower-cased, number word -> digit
        ("the dog", "dog"),       # article removed
        ("A Dog", "dog"),
        ("dont", "don't"),        # contraction restored
        ("isnt", "isn't"),
        ("1,000", "1000"),        # comma between digits removed without a space
        ("yes!", "yes"),          # '!' becomes a space, then whitespace collapses
        ("3.5", "3.5"),           # decimal point kept
        ("no.", "no"),
        ("black/white", "black white"),
        ("red, white", "red white"),  # mark next to a space is deleted
        ("10:30", "10:30"),       # colons kept (times)
        ("man's hat", "man's hat"),  # apostrophes kept
        ("t-shirt", "t shirt"),
        ("  ten\n", "10"),
        ("none", "0"),
        ("1,000 cats!", "1000 cats"),  # a digit comma anywhere deletes every mark without a space
    ],
)
def test_normalize_vqa_answer(raw: str, expected: str) -> None:
    assert normalize_vqa_answer(raw) == expected


@pytest.mark.parametrize("m, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_accuracy(m: int, expected: float) -> None:
    # By hand: leaving out one of the m matching annotators leaves m-1 matches (m such subsets),
    # leaving out a non-matching one leaves m (10-m subsets):
    # acc = (m * min(1, (m-1)/3) + (10-m) * min(1, m/3)) / 10
    # m=1: (0 + 9/3)/10 = 0.3; m=2: (2/3 + 16/3)/10 = 0.6; m=3: (2 + 7)/10 = 0.9; m=4: (4 + 6)/10 = 1.0
    answers = ["2"] * m + ["3"] * (10 - m)
    assert vqa_accuracy("Two.", answers) == pytest.approx(expected)


def test_batch_matches_single_and_validates() -> None:
    preds = ["yes", "The cat"]
    answers = [["yes"] * 10, ["cat"] * 2 + ["dog"] * 8]
    batch = vqa_accuracy_batch(preds, answers)
    np.testing.assert_allclose(batch, [1.0, 0.6])
    with pytest.raises(ValueError, match="answer lists"):
        vqa_accuracy_batch(["yes"], answers)
    with pytest.raises(ValueError, match="empty"):
        vqa_accuracy_batch([], [])
    with pytest.raises(ValueError, match="at least 2"):
        vqa_accuracy("yes", "yes")


def test_strict_official_quirk_skips_normalisation_for_unanimous_answers() -> None:
    unanimous = ["2"] * 10
    assert vqa_accuracy("two", unanimous) == 1.0
    assert vqa_accuracy("two", unanimous, strict_official=True) == 0.0
    assert vqa_accuracy(" 2\n", unanimous, strict_official=True) == 1.0
    mixed = ["2"] * 9 + ["3"]
    assert vqa_accuracy("two", mixed, strict_official=True) == pytest.approx(1.0)
