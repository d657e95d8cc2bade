"""Shared pieces of the tiny builders: a local word-level tokenizer and a seeded model init."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

#: words every tiny tokenizer knows, enough for the test prompts
BASE_WORDS = ("this", "shape", "animal", "is", "a", "the", "red", "blue", "green", "circle", "square", "what",
              "colour", "color", "?", ".", ",", ":", "answer", "question", "describe", "image", "yes", "no", "\n")


def word_tokenizer(special_tokens: Iterable[str], extra_tokens: Iterable[str] = (), bos: str = "<s>",
                   eos: str = "</s>", pad: str = "<pad>", unk: str = "<unk>") -> PreTrainedTokenizerFast:
    """A whitespace/punctuation word-level tokenizer whose specials split out wherever they appear."""
    specials = list(dict.fromkeys([pad, unk, bos, eos, *special_tokens]))
    vocab = {token: i for i, token in enumerate(specials)}
    for word in [*BASE_WORDS, *extra_tokens]:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad,
                                        unk_token=unk, additional_special_tokens=[t for t in specials if t not in (pad, unk, bos, eos)])
    tokenizer.padding_side = "left"
    return tokenizer


def seeded_init(model_cls: type, config, seed: int) -> torch.nn.Module:
    """Instantiate ``model_cls(config)`` with a fixed seed and eager attention."""
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    return model_cls(config).eval()


def with_named_tokens(tokenizer: PreTrainedTokenizerFast, **named: str) -> PreTrainedTokenizerFast:
    """Re-wrap a tiny tokenizer so that ``tokenizer.<name>`` / ``<name>_id`` exist (e.g. ``image_token``),
    as on the real checkpoints' tokenizers that multimodal processors read them from."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token, unk_token=tokenizer.unk_token,
        additional_special_tokens=list(tokenizer.extra_special_tokens), **named)
    wrapped.padding_side = tokenizer.padding_side
    return wrapped
