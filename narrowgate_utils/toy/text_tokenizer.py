"""Word-level text tokenizer of the toy world (``tokenizers`` WordLevel + ``PreTrainedTokenizerFast``).

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

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
BASE_SPECIALS = (UNK, BOS, EOS, PAD)


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
