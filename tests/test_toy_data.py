"""Toy world: generator determinism, split disjointness, annotations, tokenizers."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from narrowgate_utils.data import CLASS_PROMPT, TOY_CLASSES, TOY_PATCHING_PAIRS, Sample, VQAItem, toy_dataset
from narrowgate_utils.data.toy import (
    TOY_COLORS,
    TOY_SHAPES,
    TOY_SIZES,
    VQA_PROMPT,
    _dataset,
    _split_words,
    position_name,
    scene_split,
    toy_scenes,
)
from narrowgate_utils.toy.image_tokenizer import PatchCodebook, code_to_bpe_table, code_token_name, encode_image_tokens
from narrowgate_utils.toy.text_tokenizer import toy_tokenizer
from narrowgate_utils.training.components import train_image_tokenizer


def _pixels(sample: Sample) -> np.ndarray:
    return np.asarray(sample.image, dtype=np.int16)


def test_generator_is_deterministic_and_seed_dependent():
    first = toy_dataset("test", n=12, seed=3)
    _dataset.cache_clear()
    again = toy_dataset("test", n=12, seed=3)
    other = toy_dataset("test", n=12, seed=4)
    assert all(np.array_equal(_pixels(a), _pixels(b)) for a, b in zip(first, again))
    assert [a.vqa for a in first] == [b.vqa for b in again]
    assert not all(np.array_equal(_pixels(a), _pixels(b)) for a, b in zip(first, other))
    # a longer request starts with the shorter one
    longer = toy_dataset("test", n=20, seed=3)
    assert [s.uid for s in longer[:12]] == [s.uid for s in first]


def test_splits_are_disjoint_and_cover_every_class():
    scenes = toy_scenes()
    by_split = {split: {s for s in scenes if scene_split(s) == split} for split in ("train", "validation", "test")}
    assert sum(len(v) for v in by_split.values()) == len(scenes) == len(set(scenes))
    assert not by_split["train"] & by_split["test"] and not by_split["train"] & by_split["validation"]
    assert 0.6 < len(by_split["train"]) / len(scenes) < 0.8
    train_ids = {s.meta["scene_id"] for s in toy_dataset("train", n=900)}
    test = toy_dataset("test", n=300)
    assert not train_ids & {s.meta["scene_id"] for s in test}
    for split in ("train", "test"):
        classes = {scene[0] for scene in by_split[split]}
        assert classes == set(TOY_CLASSES)
    with pytest.raises(ValueError, match="Unknown toy split"):
        toy_dataset("val")


def test_world_size_and_annotations():
    assert len(TOY_CLASSES) >= 20 and len(TOY_SHAPES) >= 8 and len(TOY_COLORS) >= 8
    assert len(TOY_PATCHING_PAIRS) == 10
    for base, target in TOY_PATCHING_PAIRS:
        (bc, bs), (tc, ts) = base.split(), target.split()
        assert bc != tc and bs != ts
    samples = toy_dataset("test", n=200)
    agree = []
    for s in samples:
        assert isinstance(s, Sample) and s.image.size == (32, 32) and s.image.mode == "RGB"
        assert TOY_CLASSES[s.label] == s.class_name == f"{s.meta['color']} {s.meta['shape']}"
        assert len(s.captions) == 5 == len(set(s.captions))
        assert all(s.meta["color"] in c or s.meta["shape"] in c for c in s.captions)
        assert len(s.vqa) == 5 and all(isinstance(q, VQAItem) and len(q.answers) == 10 for q in s.vqa)
        color_q, shape_q, where_q, size_q, yes_no = s.vqa
        assert color_q.majority_answer == s.meta["color"] and shape_q.majority_answer == s.meta["shape"]
        assert where_q.majority_answer == s.meta["position"] and size_q.majority_answer == s.meta["size"]
        assert yes_no.answer_type == "yes/no" and yes_no.majority_answer in ("yes", "no")
        agree += [len(set(q.answers)) == 1 for q in s.vqa]
    # annotators disagree on a good share of questions, so min(1, n/3) matters
    assert 0.1 < 1 - np.mean(agree) < 0.9
    yes = [s.vqa[4].majority_answer == "yes" for s in samples]
    assert 0.35 < np.mean(yes) < 0.65
    assert min(Counter(s.label for s in toy_dataset("test")).values()) >= 15


def test_rendered_object_has_its_colour_size_and_position():
    for s in toy_dataset("validation", n=40):
        x0, y0, x1, y1 = s.meta["box"]
        assert x1 - x0 == TOY_SIZES[s.meta["size"]]
        assert position_name(s.meta["size"], x0, y0) == s.meta["position"]
        pixels = _pixels(s)
        inside = pixels[y0:y1, x0:x1].reshape(-1, 3)
        target = np.array(TOY_COLORS[s.meta["color"]])
        close = np.abs(inside - target).max(1) < 40
        assert close.mean() > 0.1  # the shape covers part of its box in its colour
        outside = np.ones((32, 32), dtype=bool)
        outside[y0:y1, x0:x1] = False
        assert (np.abs(pixels[outside] - target).max(1) < 40).mean() == 0  # the background never does


def test_text_tokenizer_round_trip_and_coverage():
    tokenizer = toy_tokenizer("chameleon", n_codebook=16)
    vocab = tokenizer.get_vocab()
    unk = tokenizer.unk_token_id
    for s in toy_dataset("train", n=100):
        texts = list(s.captions) + [s.class_name] + [VQA_PROMPT.format(question=q.question) for q in s.vqa]
        texts += [a for q in s.vqa for a in q.answers]
        for text in texts:
            ids = tokenizer(text)["input_ids"]
            assert ids[0] == tokenizer.bos_token_id and unk not in ids
            assert tokenizer.decode(ids, skip_special_tokens=True) == " ".join(_split_words(text))
    prompt = "<racm3:break>" + "<image>" * 3 + "<eoss>" + CLASS_PROMPT
    ids = tokenizer(prompt)["input_ids"]
    assert ids[:6] == [vocab["<s>"], vocab["<racm3:break>"]] + [vocab["<image>"]] * 3 + [vocab["<eoss>"]]
    assert tokenizer.convert_ids_to_tokens(ids[6:]) == ["This", "shape", "is", "a"]
    llava = toy_tokenizer("llava")
    assert llava("<image><image><eoi>What")["input_ids"][1:4] == [llava.get_vocab()[t] for t in ("<image>", "<image>", "<eoi>")]


def test_code_names_follow_chameleon_vocabulary_mapping():
    from transformers.models.chameleon.modeling_chameleon import ChameleonImageVocabularyMapping

    tokenizer = toy_tokenizer("chameleon", n_codebook=120)
    vocab = tokenizer.get_vocab()
    mapping = ChameleonImageVocabularyMapping(vocab)
    assert code_token_name(0) == "IMGIMGAZ" and code_token_name(107) == "IMGIMGBAHZ"
    table = code_to_bpe_table(vocab, 120)
    assert torch.equal(mapping.convert_img2bpe(torch.arange(120)).long(), table)
    assert set(mapping.bpe2img.values()) == set(range(120))


def test_image_tokenizer_encode_decode_save_load(tmp_path):
    train = [s.image for s in toy_dataset("train", n=150)]
    test = [s.image for s in toy_dataset("test", n=30)]
    book = train_image_tokenizer(train, n_embeddings=64, iterations=8, seed=0)
    codes = book.encode(test)
    assert codes.shape == (30, 16) and codes.dtype == torch.long and 0 <= int(codes.min()) and int(codes.max()) < 64
    assert book.decode(codes).shape == (30, 32, 32, 3)
    # the codebook reconstructs far better than the mean image
    pixels = np.stack([np.asarray(im, dtype=np.float32) / 255 for im in test])
    baseline = float(((pixels - pixels.mean(0)) ** 2).mean())
    error = book.reconstruction_error(test)
    assert error < 0.3 * baseline
    book.save(tmp_path)
    loaded = PatchCodebook.load(tmp_path)
    assert torch.equal(loaded.encode(test), codes)
    assert torch.equal(train_image_tokenizer(train, n_embeddings=64, iterations=8, seed=0).codebook, book.codebook)
    vocab = toy_tokenizer("chameleon", n_codebook=64).get_vocab()
    ids = encode_image_tokens((book, vocab), test)
    names = {i: t for t, i in vocab.items()}
    assert all(names[int(i)] == code_token_name(int(c)) for i, c in zip(ids.flatten()[:50], codes.flatten()[:50]))
