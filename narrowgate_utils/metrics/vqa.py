"""VQA accuracy with the official VQA evaluation's answer normalisation (paper Supp. Sec. 8.3).

Re-implemented from the behaviour of the official script (GT-Vision-Lab/VQA, ``vqaEval.py``):
punctuation handling, then lower-casing, number words to digits, article removal and
restoring apostrophes of contractions; accuracy min(1, #matches / 3) averaged over the
10 leave-one-annotator-out subsets.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Apostrophes and colons are deliberately absent (possessives, times like "3:00").
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# A period not followed by a digit (so "3.5" keeps its decimal point). The official pattern's
# look-behind is mistyped as "(?!<=\d)", which never matches, so only the look-ahead acts.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    """Official ``processPunctuation``: drop or space out punctuation, strip periods.

    A mark is deleted when it touches a space or when the text has a digit-comma-digit
    pattern anywhere ("1,000" -> "1000"); otherwise it becomes a space ("yes!" -> "yes ").
    """
    out = text
    has_digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in _PUNCTUATION:
        if mark + " " in text or " " + mark in text or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    """Official ``processDigitArticle``: lower-case, number words -> digits, drop articles, fix contractions."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def _clean_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(answer: str) -> str:
    """Normalise an answer as the official VQA evaluation does ("Two." -> "2", "the dog" -> "dog")."""
    if not isinstance(answer, str):
        raise ValueError(f"answer must be a string, got {type(answer).__name__}.")
    return _process_digit_article(_process_punctuation(_clean_whitespace(answer)))


def vqa_accuracy(prediction: str, answers: Sequence[str], *, strict_official: bool = False) -> float:
    """VQA accuracy of one prediction against the annotators' answers (10 in VQAv2).

    For each annotator, acc = min(1, #other annotators giving the prediction / 3); the result
    is the mean over annotators (official leave-one-out averaging). Prediction and answers are
    normalised with :func:`normalize_vqa_answer`. ``strict_official=True`` reproduces a quirk
    of the official script: it normalises only when the annotators disagree, so with
    unanimous answers the prediction must match them after whitespace trimming alone.
    """
    if isinstance(answers, str) or len(answers) < 2:
        raise ValueError("answers must be a list of at least 2 annotator answers (VQAv2 has 10 per question).")
    if not isinstance(prediction, str) or not all(isinstance(a, str) for a in answers):
        raise ValueError("prediction and answers must be strings.")
    prediction = _clean_whitespace(prediction)
    gts = [_clean_whitespace(a) for a in answers]
    if not strict_official or len(set(gts)) > 1:
        prediction = normalize_vqa_answer(prediction)
        gts = [normalize_vqa_answer(a) for a in gts]
    matches = np.array([a == prediction for a in gts], dtype=float)
    others = matches.sum() - matches  # matches among the other annotators, one value per left-out annotator
    return float(np.mean(np.minimum(1.0, others / 3.0)))


def vqa_accuracy_batch(predictions: Sequence[str], answers: Sequence[Sequence[str]], *,
                       strict_official: bool = False) -> np.ndarray:
    """Per-question :func:`vqa_accuracy`; take ``.mean()`` for the benchmark score."""
    if len(predictions) == 0:
        raise ValueError("predictions is empty; pass at least one question.")
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions but {len(answers)} answer lists; give one list per prediction.")
    return np.array([vqa_accuracy(p, a, strict_official=strict_official) for p, a in zip(predictions, answers)])
