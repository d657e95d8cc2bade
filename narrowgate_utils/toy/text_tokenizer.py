"""Word-level text tokenizers of the toy world (``tokenizers`` WordLevel + ``PreTrainedTokenizerFast``).

Words are ``\\w+`` runs and punctuation runs (the ``Whitespace`` pre-tokenizer); every
sequence starts with ``<s>``. Special tokens are matched before word splitting, so a prompt
such as ``"<racm3:break><image><eoss>This shape is a"`` tokenises the way the real
processors' expanded prompts do. Saved with the model (``tokenizer.json``) and loaded with
``AutoTokenizer.from_pretrained(model_dir)``.
"""
from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from ..data.toy import toy_vocabulary_words
from .image_tokenizer import code_token_name

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
BASE_SPECIALS = (UNK, BOS, EOS, PAD)
#: image markers of the toy families (Chameleon's start/end of image and placeholder; LLaVA's added [EOI])
SOI_TOKEN, EOI_TOKEN, IMAGE_TOKEN = "<racm3:break>", "<eoss>", "<image>"
LLAVA_EOI_TOKEN = "<eoi>"


def build_text_tokenizer(
    extra_special_tokens: Sequence[str] = (),
    plain_tokens: Sequence[str] = (),
    words: Sequence[str] | None = None,
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the toy vocabulary.

    Ids: ``<unk> <s> </s> <pad>``, then ``extra_special_tokens`` (e.g. ``<image>``,
    ``<racm3:break>``, ``<eoss>``), then the words, then ``plain_tokens`` (e.g. Chameleon's
    ``IMGIMG…Z`` image-code names, which must be ordinary vocabulary entries).
    """
    words = toy_vocabulary_words() if words is None else list(words)
    entries = list(BASE_SPECIALS) + list(extra_special_tokens) + list(words) + list(plain_tokens)
    if len(set(entries)) != len(entries):
        duplicates = sorted({t for t in entries if entries.count(t) > 1})
        raise ValueError(f"Tokenizer entries must be unique; duplicated: {duplicates[:5]}.")
    vocab = {token: i for i, token in enumerate(entries)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=list(extra_special_tokens),
    )


def toy_tokenizer(family: str, n_codebook: int = 0) -> PreTrainedTokenizerFast:
    """The toy text tokenizer of a family (Chameleon: image-code names as plain vocabulary)."""
    if family == "chameleon":
        return build_text_tokenizer([IMAGE_TOKEN, SOI_TOKEN, EOI_TOKEN],
                                    plain_tokens=[code_token_name(i) for i in range(n_codebook)])
    if family == "llava":
        return build_text_tokenizer([IMAGE_TOKEN, LLAVA_EOI_TOKEN])
    raise ValueError(f"Unknown toy family {family!r}; use 'chameleon' or 'llava'.")
