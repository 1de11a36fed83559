"""Whisper tokenizer over a package's tokenizer.json (engines/tokenizer.py)."""

from __future__ import annotations

import pytest
import tokenizers
from faster_whisper.tokenizer import Tokenizer as ReferenceTokenizer

from edgescribe.engines.tokenizer import WhisperTokenizer
from tests.fixtures.models import base_package, tiny_en_package  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def tiny(tiny_en_package):
    return WhisperTokenizer.from_package(tiny_en_package)


@pytest.fixture(scope="module")
def base(base_package):
    return WhisperTokenizer.from_package(base_package)


def _reference(package, multilingual, language="en"):
    hf = tokenizers.Tokenizer.from_file(str(package.file("tokenizer.json")))
    return ReferenceTokenizer(hf, multilingual, task="transcribe", language=language)


def test_non_speech_tokens_match_faster_whisper(tiny, base, tiny_en_package, base_package):
    assert tiny.non_speech_tokens == _reference(tiny_en_package, False).non_speech_tokens
    assert base.non_speech_tokens == _reference(base_package, True).non_speech_tokens
    assert len(tiny.non_speech_tokens) > 80


def test_special_tokens_and_sot_sequences(tiny, base, base_package):
    assert tiny.sot_sequence() == [tiny.special.sot] == [50257]
    assert tiny.special.timestamp_begin == tiny.special.no_timestamps + 1 == 50363
    reference = _reference(base_package, True, "zh")
    assert base.sot_sequence("zh", "transcribe") == reference.sot_sequence == [50258, 50260, 50359]
    assert base.sot_sequence("en", "translate") == [50258, 50259, 50358]
    assert base.sot_sequence(None) == [50258]
    with pytest.raises(ValueError, match="unknown task"):
        base.sot_sequence("en", "summarise")


def test_languages(tiny, base):
    assert tiny.languages == ("en",)
    assert len(base.languages) == 99 and base.languages[:3] == ("en", "zh", "de")
    assert base.language_token("zh") == 50260
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        base.language_token("xx")


def test_encode_decode_round_trip(tiny, base):
    text = " And so, my fellow Americans: ask not."
    assert tiny.decode(tiny.encode(text)) == text
    assert tiny.encode_prompt("  Hello world ") == tiny.encode(" Hello world")
    chinese = "我认为跑步最重要"
    assert base.decode(base.encode(chinese)) == chinese


def test_decode_drops_special_and_timestamp_tokens(tiny):
    s = tiny.special
    tokens = [s.timestamp_begin, *tiny.encode(" Hello"), s.timestamp_begin + 50, s.eot]
    assert tiny.decode(tokens) == " Hello"
    assert tiny.decode_with_timestamps(tokens[:-1]) == "<|0.00|> Hello<|1.00|>"


def test_suppress_ids(tiny):
    ids = tiny.suppress_ids((-1,))
    assert set(tiny.non_speech_tokens) <= set(ids)
    s = tiny.special
    assert {s.sot, s.sot_prev, s.sot_lm, s.no_speech, s.transcribe, s.translate} <= set(ids)
    assert s.eot not in ids and s.timestamp_begin not in ids
    assert tiny.suppress_ids(()) == tuple(sorted({s.sot, s.sot_prev, s.sot_lm, s.no_speech, s.transcribe, s.translate}))
    assert 220 in tiny.suppress_ids((220,))
