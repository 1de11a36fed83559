"""Text normalisation and error rates (engines/scoring.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgescribe.engines.scoring import (
    ErrorCounts,
    basic_normalize,
    cer,
    character_errors,
    corpus_counts,
    edit_counts,
    english_normalize,
    read_transcripts,
    wer,
    word_errors,
)


@pytest.mark.parametrize("text,expected", [
    ("Author of the danger trail, Philip Steels, etc.", "author of the danger trail philip steels etc"),
    ("LORD BUT I'M GLAD TO SEE YOU AGAIN PHIL", "lord but i am glad to see you again phil"),
    ("God bless 'em, I hope I'll go on seeing them forever.", "god bless them i hope i will go on seeing them forever"),
    ("We won't, can't and shouldn't!", "we will not can not and should not"),
    ("[MUSIC] Hello (laughs) world", "hello world"),
    ("Um, uh, so — yes.", "so yes"),
    ("Mr. Smith paid 1,000 dollars", "mister smith paid 1000 dollars"),
    ("in fourteen fifty-five", "in 1455"),
    ("in 1455", "in 1455"),
    ("one hundred and five men", "105 men"),
    ("twenty-five percent", "25 percent"),
    ("25%", "25 percent"),
    ("two thousand and twenty", "2020"),
    ("one two three", "1 2 3"),
    ("It\u2019s the world\u2019s fresh ornament", "it s the world s fresh ornament"),
])
def test_english_normalize(text, expected):
    assert english_normalize(text) == expected


def test_reference_styles_agree_after_normalisation():
    """LibriSpeech (upper case, no punctuation) vs a punctuated transcript of the same words."""
    reference = "HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS"
    hypothesis = "He hoped there would be stew for dinner, turnips and carrots."
    assert wer(reference, hypothesis) == 0.0


def test_basic_normalize_for_other_languages():
    assert basic_normalize("我认为，跑步最重要！") == "我认为 跑步最重要"
    assert basic_normalize("Ça VA? «Très» bien.") == "ça va très bien"


def test_word_error_counts():
    counts = word_errors("the cat sat on the mat", "the cat sat on mat today")
    assert counts.errors == 2 and counts.reference_length == 6 and counts.rate == pytest.approx(2 / 6)
    assert word_errors("a b c", "a c") == ErrorCounts(substitutions=0, deletions=1, insertions=0, reference_length=3)
    assert word_errors("a c", "a b c") == ErrorCounts(substitutions=0, deletions=0, insertions=1, reference_length=2)
    assert wer("a b c", "a x c") == pytest.approx(1 / 3)
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


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("abcd"), max_size=12), st.lists(st.sampled_from("abcd"), max_size=12))
def test_edit_distance_properties(reference, hypothesis):
    counts = edit_counts(reference, hypothesis)
    reverse = edit_counts(hypothesis, reference)
    assert counts.errors == reverse.errors  # Levenshtein distance is symmetric
    assert abs(len(reference) - len(hypothesis)) <= counts.errors <= max(len(reference), len(hypothesis))
    # the operations account for the lengths exactly
    assert len(reference) - counts.deletions + counts.insertions == len(hypothesis)
    assert (counts.errors == 0) == (reference == hypothesis)


def test_read_transcripts(corpus):
    references = read_transcripts(corpus / "en" / "transcripts.tsv")
    assert references["jfk_inaugural_1961"].startswith("And so, my fellow Americans")
    assert all((corpus / "en" / f"{key}.wav").is_file() for key in references)
