"""Accuracy scoring: text normalisation, word and character error rates.

References come in their datasets' own styles (LibriSpeech upper case without punctuation,
LJ Speech with numbers spelled out, ARCTIC with punctuation), so both sides are normalised
before comparing: lower case, no punctuation or brackets, contractions expanded, number
words turned into digits. This follows Whisper's ``EnglishTextNormalizer`` in spirit
without its British/American spelling table. Corpus rates are total edits over total
reference units, not a mean of per-file rates, so long files weigh what they contain.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable

log = logging.getLogger(__name__)

_FILLERS = frozenset({"hmm", "mm", "mhm", "mmm", "uh", "um", "er", "ah"})

# Whole-word contractions first, then the generic suffixes (as Whisper's normaliser).
_CONTRACTIONS = [
    (r"\bwon't\b", "will not"),
    (r"\bcan't\b", "can not"),
    (r"\blet's\b", "let us"),
    (r"\bain't\b", "aint"),
    (r"\by'all\b", "you all"),
    (r"\bwanna\b", "want to"),
    (r"\bgotta\b", "got to"),
    (r"\bgonna\b", "going to"),
    (r"\bi'ma\b", "i am going to"),
    (r"\bimma\b", "i am going to"),
    (r"\bwoulda\b", "would have"),
    (r"\bcoulda\b", "could have"),
    (r"\bshoulda\b", "should have"),
    (r"\bma'am\b", "madam"),
    (r"\bmr\b", "mister "),
    (r"\bmrs\b", "missus "),
    (r"\bst\b", "saint "),
    (r"\bdr\b", "doctor "),
    (r"(?<!\w)'em\b", "them"),
    (r"n't\b", " not"),
    (r"'re\b", " are"),
    (r"'d\b", " would"),
    (r"'ll\b", " will"),
    (r"'ve\b", " have"),
    (r"'m\b", " am"),
]
_CONTRACTION_PATTERNS = [(re.compile(pattern), replacement) for pattern, replacement in _CONTRACTIONS]

_ONES = {
    "zero": 0, "oh": None, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000}


def english_normalize(text: str) -> str:
    """Normalise English text for WER: 'Mr. Smith's 2 cats, won't they?' -> 'mister smith s 2 cats will not they'."""
    s = text.lower()
    s = re.sub(r"[<\[][^>\]]*[>\]]", " ", s)  # <tags> and [annotations]
    s = re.sub(r"\(([^)]+?)\)", " ", s)  # (parenthesised asides)
    s = s.replace("\u2019", "'").replace("\u2018", "'")
    s = re.sub(r"\s+'", " '", s)
    for pattern, replacement in _CONTRACTION_PATTERNS:
        s = pattern.sub(replacement, s)
    s = re.sub(r"(\d),(\d)", r"\1\2", s)  # 1,000 -> 1000
    s = re.sub(r"\.(?!\d)", " ", s)  # periods that are not decimal points
    s = s.replace("%", " percent ").replace("&", " and ")
    s = _remove_symbols(s, keep=".")
    words = [w for w in s.split() if w not in _FILLERS]
    return " ".join(_numbers_to_digits(words))


def basic_normalize(text: str) -> str:
    """Language-neutral normalisation: lower case, symbols and punctuation removed, diacritics kept."""
    s = re.sub(r"[<\[][^>\]]*[>\]]", " ", text.lower())
    s = re.sub(r"\(([^)]+?)\)", " ", s)
    return " ".join(_remove_symbols(s).split())


def _remove_symbols(text: str, keep: str = "") -> str:
    # NFKC folds full-width CJK punctuation and digits onto their ASCII forms first.
    text = unicodedata.normalize("NFKC", text)
    return "".join(
        c if c in keep or unicodedata.category(c)[0] not in "MSP" else " " for c in text
    )


def _numbers_to_digits(words: list[str]) -> list[str]:
    """Replace runs of spelled-out numbers by digits: 'one hundred and five' -> '105'.

    Year-style pairs ('nineteen sixty one', 'fourteen fifty five') join as digits the way
    they are read, so they agree with a transcript that wrote '1961' or '1455'.
    """
    out: list[str] = []
    i = 0
    while i < len(words):
        j, value = _parse_number(words, i)
        if j == i:
            out.append(words[i])
            i += 1
        else:
            out.append(value)
            i = j
    return out


def _small_number(words: list[str], i: int) -> tuple[int, int | None]:
    """Parse 1..99 ('twenty', 'twenty five', 'twenty-five' already split) at ``i``."""
    if i < len(words) and words[i] in _TENS:
        value = _TENS[words[i]]
        if i + 1 < len(words) and words[i + 1] in _ONES and _ONES[words[i + 1]] and _ONES[words[i + 1]] < 10:
            return i + 2, value + _ONES[words[i + 1]]
        return i + 1, value
    if i < len(words) and words[i] in _ONES and _ONES[words[i]] is not None:
        return i + 1, _ONES[words[i]]
    return i, None


def _parse_number(words: list[str], i: int) -> tuple[int, str]:
    start = i
    words_hyphen = words  # hyphens were turned into spaces by _remove_symbols
    j, first = _small_number(words_hyphen, i)
    if first is None:
        return start, ""
    # Year style: a 10..99 number directly followed by another 10..99 number.
    if 10 <= first and j < len(words) and words[j] not in _SCALES:
        k, second = _small_number(words, j)
        if second is not None and second >= 10:
            return k, f"{first}{second:02d}"
        if j + 1 < len(words) and words[j] == "oh":
            k, second = _small_number(words, j + 1)
            if second is not None and second < 10:
                return k, f"{first}0{second}"
    total = 0
    current = first
    i = j
    while i < len(words):
        word = words[i]
        if word in _SCALES:
            scale = _SCALES[word]
            if scale == 100:
                current *= 100
            else:
                total += current * scale
                current = 0
            i += 1
            continue
        spoken_and = current >= 100 or (total > 0 and current == 0)  # "a hundred and five", "two thousand and ten"
        if word == "and" and spoken_and and i + 1 < len(words) and (words[i + 1] in _ONES or words[i + 1] in _TENS):
            i += 1
            continue
        k, value = _small_number(words, i)
        if value is None or (current % 100) != 0 and current != 0:
            break
        current += value
        i = k
    return i, str(total + current)


@dataclass(frozen=True)
class ErrorCounts:
    """Edit operations between a hypothesis and a reference, in words or characters."""

    substitutions: int
    deletions: int
    insertions: int
    reference_length: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        if self.reference_length == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.reference_length

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_length + other.reference_length,
        )


def edit_counts(reference: list[str], hypothesis: list[str]) -> ErrorCounts:
    """Levenshtein alignment counts (substitution, deletion, insertion all cost 1)."""
    n, m = len(reference), len(hypothesis)
    # cost[j] and ops[j] for the previous row; ops = (subs, dels, ins) of the best path
    previous = [(j, (0, 0, j)) for j in range(m + 1)]
    for i in range(1, n + 1):
        current = [(i, (0, i, 0))]
        for j in range(1, m + 1):
            same = reference[i - 1] == hypothesis[j - 1]
            cost_d, ops_d = previous[j - 1]
            candidates = (
                (cost_d + (0 if same else 1), (ops_d[0] + (0 if same else 1), ops_d[1], ops_d[2])),
                (previous[j][0] + 1, (previous[j][1][0], previous[j][1][1] + 1, previous[j][1][2])),
                (current[j - 1][0] + 1, (current[j - 1][1][0], current[j - 1][1][1], current[j - 1][1][2] + 1)),
            )
            current.append(min(candidates, key=lambda c: c[0]))
        previous = current
    subs, dels, ins = previous[m][1]
    return ErrorCounts(subs, dels, ins, n)


def normalizer_for(language: str):
    return english_normalize if language == "en" else basic_normalize


def word_errors(reference: str, hypothesis: str, language: str = "en") -> ErrorCounts:
    normalize = normalizer_for(language)
    return edit_counts(normalize(reference).split(), normalize(hypothesis).split())


def character_errors(reference: str, hypothesis: str, language: str = "zh") -> ErrorCounts:
    """Character edits after normalisation, ignoring spaces (Mandarin, Japanese, ...)."""
    normalize = normalizer_for(language)
    return edit_counts(list(normalize(reference).replace(" ", "")), list(normalize(hypothesis).replace(" ", "")))


def wer(reference: str, hypothesis: str, language: str = "en") -> float:
    return word_errors(reference, hypothesis, language).rate


def cer(reference: str, hypothesis: str, language: str = "zh") -> float:
    return character_errors(reference, hypothesis, language).rate


def corpus_counts(pairs: Iterable[tuple[str, str]], language: str = "en", unit: str = "word") -> ErrorCounts:
    """Summed edit counts over (reference, hypothesis) pairs; ``.rate`` is the corpus WER/CER."""
    count = word_errors if unit == "word" else character_errors
    total = ErrorCounts(0, 0, 0, 0)
    for reference, hypothesis in pairs:
        total = total + count(reference, hypothesis, language)
    return total


def read_transcripts(path) -> dict[str, str]:
    """A corpus ``transcripts.tsv`` (id<TAB>reference, UTF-8) as {id: reference}."""
    references = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line:
                key, _, text = line.partition("\t")
                references[key] = text
    return references
