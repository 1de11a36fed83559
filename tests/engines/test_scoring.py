"""The scorer of the accuracy tests and benchmarks (tests/fixtures/scoring.py): jiwer after
Whisper's normalisers, corpus rates as total edits over total reference units."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures.scoring import (
    ErrorCounts,
    cer,
    character_errors,
    corpus_counts,
    normalize,
    read_transcripts,
    wer,
    word_errors,
)


@pytest.mark.parametrize("text,expected", [
    ("Author of the danger trail, Philip Steels, etc.", "author of the danger trail philip steels etc"),
    ("LORD BUT I'M GLAD TO SEE YOU AGAIN PHIL", "lord but i am glad to see you again phil"),
    ("We won't, can't and shouldn't!", "we will not can not and should not"),
    ("[MUSIC] Hello (laughs) world", "hello world"),
    ("Um, uh, so — yes.", "so yes"),
    ("in fourteen fifty-five", "in 1455"),
    ("one hundred and five men", "105 men"),
    ("twenty-five percent", "25%"),  # Whisper's normaliser writes percentages as digits and %
    ("The colour of the harbour", "the color of the harbor"),  # its British -> American table
])
def test_english_is_whispers_normaliser(text, expected):
    assert normalize(text) == expected


def test_reference_styles_agree_after_normalisation():
    """LibriSpeech (upper case, no punctuation) vs a punctuated transcript of the same words."""
    reference = "HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS"
    hypothesis = "He hoped there would be stew for dinner, turnips and carrots."
    assert wer(reference, hypothesis) == 0.0


def test_other_languages_get_the_basic_normaliser():
    assert normalize("我认为，跑步最重要！", "zh") == "我认为 跑步最重要"
    assert normalize("Ça VA? «Très» bien.", "fr") == "ça va très bien"


def test_word_error_counts():
    counts = word_errors("the cat sat on the mat", "the cat sat on mat today")
    assert counts.errors == 2 and counts.reference_length == 6 and counts.rate == pytest.approx(2 / 6)
    assert word_errors("a b c", "a c") == ErrorCounts(substitutions=0, deletions=1, insertions=0, reference_length=3)
    assert word_errors("a c", "a b c") == ErrorCounts(substitutions=0, deletions=0, insertions=1, reference_length=2)
    assert wer("a b c", "a x c") == pytest.approx(1 / 3)
    assert wer("a b c", "") == 1.0
    assert wer("", "") == 0.0 and wer("", "extra") == float("inf")


def test_character_error_rate_ignores_spaces_and_punctuation():
    assert cer("我认为跑步最重要", "我认为 跑步，最重要。") == 0.0
    counts = character_errors("而对楼市成交抑制作用最大的限购", "而对楼市成交抑制作用最大的现购")
    assert counts.substitutions == 1 and counts.reference_length == 15


def test_corpus_rate_is_total_edits_over_total_words():
    pairs = [("a b c d e f g h i j", "a b c d e f g h i j"), ("x y", "x z")]
    counts = corpus_counts(pairs)
    assert counts.errors == 1 and counts.reference_length == 12
    assert counts.rate == pytest.approx(1 / 12)  # a mean of per-file rates would say 0.25


WORDS = st.lists(st.sampled_from(["cat", "dog", "sun", "map"]), max_size=12)


@settings(max_examples=200, deadline=None)
@given(WORDS, WORDS)
def test_edit_counts_account_for_both_texts(reference, hypothesis):
    counts = word_errors(" ".join(reference), " ".join(hypothesis))
    reverse = word_errors(" ".join(hypothesis), " ".join(reference))
    assert counts.errors == reverse.errors  # Levenshtein distance is symmetric
    assert abs(len(reference) - len(hypothesis)) <= counts.errors <= max(len(reference), len(hypothesis))
    assert counts.reference_length == len(reference)
    assert len(reference) - counts.deletions + counts.insertions == len(hypothesis)
    assert (counts.errors == 0) == (reference == hypothesis)


def test_read_transcripts(corpus):
    references = read_transcripts(corpus / "en" / "transcripts.tsv")
    assert references["jfk_inaugural_1961"].startswith("And so, my fellow Americans")
    assert all((corpus / "en" / f"{key}.wav").is_file() for key in references)
