"""The one decoding loop (engines/decoding.py) on real weights and real speech."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgescribe.engines.audio import load_audio, pad_or_trim
from edgescribe.engines.decoding import DecodingOptions, compression_ratio, continuation, decode, split_at_timestamps
from tests.fixtures.models import base_package, tiny_en_package  # noqa: F401  (fixtures)
from tests.fixtures.scoring import normalize
from tests.fixtures.whisper_models import base_model, tiny_en_model  # noqa: F401  (fixtures)

JFK = "and so my fellow americans ask not what your country can do for you ask what you can do for your country"


def _window(model, path):
    return pad_or_trim(model.log_mel(load_audio(path))[:, :-1])


@pytest.fixture(scope="module")
def windows(tiny_en_model, corpus):
    names = ("jfk_inaugural_1961", "arctic_axb_a0004", "lj_LJ001-0002")
    return {name: _window(tiny_en_model, corpus / "en" / f"{name}.wav") for name in names}


def _check_timestamp_rules(tokens, begin, max_initial=1.0):
    times = [t for t in tokens if t >= begin]
    assert tokens[0] >= begin and (tokens[0] - begin) * 0.02 <= max_initial + 1e-9
    assert times == sorted(times)  # never decreasing
    # text never directly follows a closing timestamp without a new opening one
    for i in range(1, len(tokens) - 1):
        if tokens[i] >= begin and tokens[i - 1] < begin:  # a closing timestamp
            assert tokens[i + 1] >= begin


def test_greedy_with_timestamps(tiny_en_model, windows):
    result = decode(tiny_en_model, windows["jfk_inaugural_1961"][None])[0]
    begin = tiny_en_model.tokenizer.special.timestamp_begin
    assert normalize(result.text) == JFK
    assert result.language == "en" and result.language_probs is None
    _check_timestamp_rules(result.tokens, begin)
    assert result.complete and not result.hit_length_limit
    assert len(result.spans) >= 1 and all(s.end is not None and s.end > s.start for s in result.spans)
    assert 9.0 < result.spans[-1].end < 11.5  # the speech ends at about 10.7 s of 11 s
    assert -1.0 < result.avg_logprob < 0 and result.no_speech_prob < 0.2
    assert result.compression_ratio == pytest.approx(compression_ratio(result.text))


def test_batch_equals_single_windows(tiny_en_model, windows):
    mel = np.stack(list(windows.values()))
    batched = decode(tiny_en_model, mel)
    for window, together in zip(windows.values(), batched):
        alone = decode(tiny_en_model, window[None])[0]
        assert together.tokens == alone.tokens
        assert together.avg_logprob == pytest.approx(alone.avg_logprob, abs=1e-3)


def test_rows_with_different_prompts_and_options(tiny_en_model, windows):
    """Ragged prompts and per-row options in one batch give each row its own answer."""
    tokenizer = tiny_en_model.tokenizer
    mel = np.stack([windows["jfk_inaugural_1961"], windows["arctic_axb_a0004"]])
    options = [
        DecodingOptions(prompt=tuple(tokenizer.encode_prompt("A speech by President Kennedy in 1961."))),
        DecodingOptions(without_timestamps=True),
    ]
    batched = decode(tiny_en_model, mel, options)
    for row, option in enumerate(options):
        assert batched[row].tokens == decode(tiny_en_model, mel[row : row + 1], option)[0].tokens
    assert all(t < tokenizer.special.eot for t in batched[1].tokens)  # no timestamps asked
    assert normalize(batched[1].text).startswith("lord but i am glad to see you again")


def test_prefix_is_forced(tiny_en_model, windows):
    tokenizer = tiny_en_model.tokenizer
    option = DecodingOptions(prefix=tuple(tokenizer.encode_prompt("And so, my fellow citizens")))
    result = decode(tiny_en_model, windows["jfk_inaugural_1961"][None], option)[0]
    assert result.text.startswith("And so, my fellow citizens")


def test_the_continuation_of_a_prefixed_decode_scores_only_what_follows_the_prefix(tiny_en_model, windows):
    tokenizer = tiny_en_model.tokenizer
    prefix = tuple(tokenizer.encode_prompt("And so, my fellow"))
    option = DecodingOptions(prefix=prefix, without_timestamps=True)
    result = decode(tiny_en_model, windows["jfk_inaugural_1961"][None], option)[0]
    rest = continuation(result, len(prefix), tokenizer)
    assert result.tokens[: len(prefix)] == list(prefix) and rest.tokens == result.tokens[len(prefix) :]
    assert rest.text == tokenizer.decode(rest.tokens).strip() and rest.text.lower().startswith("americans")
    # forced tokens were scored 0: the continuation's average is over its own tokens
    assert rest.avg_logprob * (len(rest.tokens) + 1) == pytest.approx(result.avg_logprob * (len(result.tokens) + 1))
    assert rest.avg_logprob < result.avg_logprob and rest.compression_ratio == compression_ratio(rest.text)
    assert rest.token_logprobs == result.token_logprobs[len(prefix) :] and rest.no_speech_prob == result.no_speech_prob


def test_sample_len_bounds_the_output(tiny_en_model, windows):
    result = decode(tiny_en_model, windows["jfk_inaugural_1961"][None], DecodingOptions(sample_len=5))[0]
    assert len(result.tokens) == 5 and result.hit_length_limit


def test_sampling_is_seeded(tiny_en_model, windows):
    mel = windows["lj_LJ001-0002"][None]
    hot = [decode(tiny_en_model, mel, DecodingOptions(temperature=1.0, seed=seed))[0] for seed in (1, 1, 2, 3, 4)]
    assert hot[0].tokens == hot[1].tokens and hot[0].temperature == 1.0
    assert len({tuple(r.tokens) for r in hot}) > 1  # different seeds explore different texts


def test_a_sampled_row_depends_on_its_own_seed_not_on_its_batch(tiny_en_model, windows):
    """best_of decodes several seeds of one window in a batch, and the scheduler may batch
    rows of different streams: a row's sample must be the same alone or in company."""
    mel = windows["lj_LJ001-0002"][None]
    alone = decode(tiny_en_model, mel, DecodingOptions(temperature=1.0, seed=3))[0]
    batch = decode(tiny_en_model, np.repeat(mel, 3, axis=0), [DecodingOptions(temperature=1.0, seed=seed) for seed in (1, 3, 2)])
    assert batch[1].tokens == alone.tokens
    again = decode(tiny_en_model, np.repeat(mel, 3, axis=0), [DecodingOptions(temperature=1.0, seed=seed) for seed in (1, 3, 2)])
    assert [r.tokens for r in again] == [r.tokens for r in batch]


def test_silence_is_recognised_as_no_speech(tiny_en_model):
    silence = pad_or_trim(tiny_en_model.log_mel(np.zeros(16000 * 5, np.float32))[:, :-1])
    result = decode(tiny_en_model, silence[None])[0]
    assert result.no_speech_prob > 0.6


def test_language_detection(base_model, corpus):
    mel = np.stack([_window(base_model, corpus / "zh" / "aishell1_BAC009S0002W0122.wav"),
                    _window(base_model, corpus / "en" / "jfk_inaugural_1961.wav")])
    detected = decode(base_model, mel, DecodingOptions(without_timestamps=True))
    assert [r.language for r in detected] == ["zh", "en"]
    assert detected[0].language_probs["zh"] > 0.5 and sum(detected[0].language_probs.values()) == pytest.approx(1.0)
    given = decode(base_model, mel[:1], DecodingOptions(language="zh", without_timestamps=True))[0]
    assert given.language_probs is None and given.tokens == detected[0].tokens
    translated = decode(base_model, mel[:1], DecodingOptions(language="zh", task="translate", without_timestamps=True))[0]
    assert translated.text.isascii()


def test_bad_options(tiny_en_model, base_model, windows):
    mel = windows["arctic_axb_a0004"][None]
    with pytest.raises(ValueError, match="English-only"):
        decode(tiny_en_model, mel, DecodingOptions(task="translate"))
    with pytest.raises(ValueError, match="unknown language code"):
        decode(base_model, mel, DecodingOptions(language="klingon"))
    with pytest.raises(ValueError, match="2 decoding options for 1 windows"):
        decode(tiny_en_model, mel, [DecodingOptions()] * 2)


def test_options_are_a_frozen_dataclass():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DecodingOptions().temperature = 1.0


def test_split_at_timestamps():
    b = 1000  # timestamp_begin; token b + n means n * 20 ms
    spans, complete = split_at_timestamps([b, 1, 2, b + 50, b + 50, 3, b + 100], b)
    assert complete and [(s.start, s.end) for s in spans] == [(0.0, 1.0), (1.0, 2.0)]
    assert spans[1].tokens == [b + 50, 3, b + 100]
    # an unfinished last segment is dropped and reported as incomplete
    spans, complete = split_at_timestamps([b, 1, b + 50, b + 50, 3, 4], b)
    assert not complete and len(spans) == 1 and spans[0].end == 1.0
    # one pair only: a single span; no closing timestamp: it runs to the end of the window
    spans, complete = split_at_timestamps([b + 10, 1, 2], b)
    assert complete and spans[0].start == pytest.approx(0.2) and spans[0].end is None
    spans, _ = split_at_timestamps([b, 1, 2, b + 75], b)
    assert spans[0].start == 0.0 and spans[0].end == pytest.approx(1.5)
    spans, _ = split_at_timestamps([1, 2], b, without_timestamps=True)
    assert spans[0].tokens == [1, 2] and spans[0].end is None
