"""Beam search (engines/beam_search.py) on real weights and real speech.

tiny.en float32 through ONNX Runtime, compared with this project's greedy decoding and with
faster-whisper float32 running its own beam search (CTranslate2) on the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest

from edgescribe.engines.audio import load_audio, pad_or_trim
from edgescribe.daemon.config.transcription import TranscriptionConfig
from edgescribe.daemon.scheduler import InferenceScheduler
from edgescribe.daemon.segmenter import Utterance
from edgescribe.daemon.streaming import StreamTranscriber
from edgescribe.engines.backend import create_runner
from edgescribe.engines import transcribe_command
from edgescribe.engines.decoding import DecodingOptions, decode
from edgescribe.engines.errors import EdgescribeError
from edgescribe.engines.model import WhisperModel
from edgescribe.engines.tensorrt.build import build_engines
from edgescribe.engines.tensorrt.builder import BuildOptions
from edgescribe.engines.transcribe import TranscribeOptions, transcribe
from tests.fixtures.fake_tensorrt import FakeTensorRT
from tests.fixtures.faster_whisper_reference import load_reference
from tests.fixtures.model_package import onnx_sessions, tiny_package  # noqa: F401  (fixtures)
from tests.fixtures.models import tiny_en_package  # noqa: F401  (fixtures)
from tests.fixtures.scoring import normalize
from tests.fixtures.streaming import Collected, engines_for
from tests.fixtures.whisper_models import tiny_en_model  # noqa: F401  (fixtures)

# short single-utterance files of each corpus source
FILES = ("jfk_inaugural_1961", "arctic_axb_a0004", "arctic_aew_a0001", "lj_LJ001-0002", "lj_LJ001-0007",
         "ls_1089-134686-0000", "ls_1995-1837-0001", "ls_2033-164914-0004", "ls_3331-159605-0002", "ls_533-1066-0006")


@pytest.fixture(scope="module")
def windows(tiny_en_model, corpus):
    return {name: pad_or_trim(tiny_en_model.log_mel(load_audio(corpus / "en" / f"{name}.wav"))[:, :-1])
            for name in FILES}


def _ranked(result) -> float:
    """The beam ranker's score: summed log-probability per generated token."""
    total = result.avg_logprob * (len(result.tokens) + 1)
    return total / max(len(result.tokens), 1)


def _summed(result) -> float:
    return result.avg_logprob * (len(result.tokens) + 1)


@pytest.mark.parametrize("kind", ["timestamps", "text-only", "prompt-and-prefix"])
def test_one_beam_is_greedy_token_for_token(tiny_en_model, windows, kind):
    tokenizer = tiny_en_model.tokenizer
    options = {
        "timestamps": DecodingOptions(),
        "text-only": DecodingOptions(without_timestamps=True),
        "prompt-and-prefix": DecodingOptions(prompt=tuple(tokenizer.encode_prompt("Orin, spindle, torque.")),
                                             prefix=tuple(tokenizer.encode(" And"))),
    }[kind]
    names = FILES[:4]
    mel = np.stack([windows[n] for n in names])
    greedy = decode(tiny_en_model, mel, options)
    # a 2-beam window in the batch sends every window through the beam search; the others run 1 beam
    searched = decode(tiny_en_model, mel, [dataclasses.replace(options, beam_size=2)] + [options] * (len(names) - 1))
    for name, g, b in zip(names[1:], greedy[1:], searched[1:]):
        assert b.tokens == g.tokens, name
        assert b.text == g.text
        assert b.avg_logprob == pytest.approx(g.avg_logprob, abs=1e-4), name
        assert b.no_speech_prob == pytest.approx(g.no_speech_prob, abs=1e-6)
        assert (b.complete, b.hit_length_limit, b.spans) == (g.complete, g.hit_length_limit, g.spans)
    if kind == "prompt-and-prefix":
        assert all(normalize(r.text).startswith("and") for r in searched)


def test_five_beams_score_at_least_greedy_on_every_file(tiny_en_model, windows):
    mel = np.stack([windows[n] for n in FILES])
    greedy = decode(tiny_en_model, mel, DecodingOptions())
    beamed = decode(tiny_en_model, mel, DecodingOptions(beam_size=5))
    print(f"\n{'file':24} {'summed greedy':>14} {'beam 5':>8} {'per token greedy':>17} {'beam 5':>8}")
    for name, g, b in zip(FILES, greedy, beamed):
        print(f"{name:24} {_summed(g):14.3f} {_summed(b):8.3f} {_ranked(g):17.4f} {_ranked(b):8.4f}")
    differ = 0
    for name, g, b in zip(FILES, greedy, beamed):
        # what the search maximises: log-probability per generated token (openai-whisper's ranker)
        assert _ranked(b) >= _ranked(g) - 1e-6, name
        differ += b.tokens != g.tokens
    assert differ >= 2  # the search really left the greedy path somewhere


def test_beam_results_carry_the_winners_token_probabilities_and_words_get_them(tiny_en_model, windows, corpus):
    names = FILES[:5]
    mel = np.stack([windows[n] for n in names])
    greedy = decode(tiny_en_model, mel, DecodingOptions())
    beamed = decode(tiny_en_model, mel, DecodingOptions(beam_size=5))
    same = 0
    for name, g, b in zip(names, greedy, beamed):
        assert len(b.token_logprobs) == len(b.tokens) and all(p <= 0 for p in b.token_logprobs), name
        # the winner's own steps: with end-of-text's, they add up to the score it was ranked by
        assert sum(b.token_logprobs) >= _summed(b) - 1e-9 and sum(b.token_logprobs) - _summed(b) < 5, name
        if b.tokens == g.tokens:
            np.testing.assert_allclose(b.token_logprobs, g.token_logprobs, atol=1e-4, err_msg=name)
            same += 1
    assert 0 < same < len(names)  # both kinds of window were seen

    path = corpus / "en" / "arctic_axb_a0004.wav"  # beam and greedy decode it to the same tokens
    words = {beams: [w for s in transcribe(tiny_en_model, path, TranscribeOptions(word_timestamps=True, beam_size=beams)).segments
                     for w in s.words] for beams in (1, 5)}
    assert [w.word for w in words[5]] == [w.word for w in words[1]] and len(words[5]) >= 5
    assert all(0 < w.probability <= 1 for w in words[5])
    np.testing.assert_allclose([w.probability for w in words[5]], [w.probability for w in words[1]], atol=1e-3)


def test_filters_hold_under_beam_search(tiny_en_model, windows):
    begin = tiny_en_model.tokenizer.special.timestamp_begin
    suppressed = set(tiny_en_model.tokenizer.suppress_ids((-1,)))
    mel = np.stack([windows[n] for n in FILES[:4]])
    for result in decode(tiny_en_model, mel, DecodingOptions(beam_size=5)):
        tokens = result.tokens
        times = [t for t in tokens if t >= begin]
        assert tokens[0] >= begin and (tokens[0] - begin) * 0.02 <= 1.0  # opens with an early timestamp
        assert times == sorted(times)
        for i in range(1, len(tokens) - 1):
            if tokens[i] >= begin and tokens[i - 1] < begin:  # a closing timestamp: no text right after
                assert tokens[i + 1] >= begin
        assert not suppressed & set(tokens)
    for result in decode(tiny_en_model, mel, DecodingOptions(beam_size=5, without_timestamps=True)):
        assert result.tokens and all(t < begin for t in result.tokens)
        assert result.tokens[0] not in tiny_en_model.tokenizer.encode(" ")  # no blank start
        assert normalize(result.text)


def test_length_limit_and_patience(tiny_en_model, windows):
    mel = windows["jfk_inaugural_1961"][None]
    cut = decode(tiny_en_model, mel, DecodingOptions(beam_size=5, sample_len=6))[0]
    assert cut.hit_length_limit and len(cut.tokens) == 6
    patient = decode(tiny_en_model, mel, DecodingOptions(beam_size=3, patience=2.0))[0]
    assert normalize(patient.text).startswith("and so my fellow americans")


def test_beam_and_sampling_in_one_batch(tiny_en_model, windows):
    mel = np.stack([windows[n] for n in FILES[:3]])
    options = [DecodingOptions(beam_size=5), DecodingOptions(temperature=0.6, seed=3), DecodingOptions()]
    together = decode(tiny_en_model, mel, options)
    alone = [decode(tiny_en_model, mel[i : i + 1], options[i])[0] for i in range(3)]
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    with pytest.raises(ValueError, match="temperature 0"):
        decode(tiny_en_model, mel[:1], DecodingOptions(beam_size=5, temperature=0.2))
    with pytest.raises(ValueError, match="encoded"):
        decode(tiny_en_model, mel[:2], options[:2], encoded=tiny_en_model.runner.encode(mel[:2]))


def test_transcripts_match_faster_whisper_beam_search(tiny_en_model, corpus):
    reference = load_reference("tiny.en", compute_type="float32", threads=2)
    same = 0
    print()
    for name in FILES:
        path = corpus / "en" / f"{name}.wav"
        ours = transcribe(tiny_en_model, path, TranscribeOptions(language="en", beam_size=5, encoder_window="full")).text
        segments, _ = reference.transcribe(str(path), language="en", beam_size=5, best_of=5, vad_filter=False)
        theirs = "".join(s.text for s in segments).strip()
        identical = normalize(ours) == normalize(theirs)
        same += identical
        print(f"{name:24} {'same' if identical else 'DIFFERENT'}\n    ours:           {ours}\n    faster-whisper: {theirs}")
    assert same >= 0.8 * len(FILES)


def test_tensorrt_runner_follows_the_beams_like_onnx_runtime(tiny_package, onnx_sessions, tiny_en_model, windows,  # noqa: F811
                                                             tmp_path):
    """The TensorRT runner's device-side cross K/V selection and cache reorder, through the GPU
    double (real ONNX graphs behind a fake device), against ONNX Runtime."""
    fake = FakeTensorRT(sessions=onnx_sessions)
    build_engines(tiny_package, tmp_path, BuildOptions(max_batch=3, max_prompt_tokens=32), fake, threads=1)
    runner = create_runner(tiny_package, "tensorrt", engine_dir=tmp_path, load_tensorrt=lambda: fake)
    model = WhisperModel.from_package(tiny_package, runner)
    mel = windows["ls_1089-134686-0000"][None]
    on_gpu = decode(model, mel, DecodingOptions(beam_size=3))[0]
    on_cpu = decode(tiny_en_model, mel, DecodingOptions(beam_size=3))[0]
    assert on_gpu.tokens == on_cpu.tokens
    assert on_gpu.avg_logprob == pytest.approx(on_cpu.avg_logprob, abs=0.02)
    # two windows of 2 beams are 4 rows, more than the engines take: searched in two groups
    two = np.stack([windows["jfk_inaugural_1961"], windows["lj_LJ001-0007"]])
    on_gpu = decode(model, two, DecodingOptions(beam_size=2))
    assert [r.tokens for r in on_gpu] == [r.tokens for r in decode(tiny_en_model, two, DecodingOptions(beam_size=2))]
    with pytest.raises(ValueError, match="beam_size 4 needs 4 decoder rows; the engine takes at most 3"):
        decode(model, mel, DecodingOptions(beam_size=4))


def test_daemon_finals_use_the_configured_beams_and_partials_stay_greedy(tiny_en_model, corpus):
    seen = []
    mels = []

    def recording_decode(model, mel, options):
        seen.extend((o.beam_size, o.temperature) for o in options)
        mels.append(mel)
        return decode(model, mel, options)

    scheduler = InferenceScheduler(decode=recording_decode, encoder_window="full")  # where greedy and beams differ
    scheduler.start()
    try:
        audio = load_audio(corpus / "en" / "ls_1089-134686-0000.wav")
        events = Collected()
        config = TranscriptionConfig(beam_size=5, speculative_final=False)
        transcriber = StreamTranscriber("mic", config, scheduler, engines_for(tiny_en_model), events)
        transcriber.push(Utterance("mic", "u1", 0.0, 0.0, audio[: 4 * 16000], False))
        assert scheduler.wait_idle(120)
        transcriber.push(Utterance("mic", "u1", 0.0, 0.0, audio, True))
        assert scheduler.wait_idle(120)
    finally:
        scheduler.stop()
    assert seen == [(1, 0.0), (5, 0.0)]  # the partial greedy, the final with 5 beams
    (final,) = events.finals()
    greedy = decode(tiny_en_model, mels[-1], DecodingOptions(without_timestamps=True))[0].text
    assert final.text != greedy.strip()  # on this sentence the two differ ("flower-fattened" / "flower fattened")
    assert final.text == decode(tiny_en_model, mels[-1], DecodingOptions(without_timestamps=True, beam_size=5))[0].text


def _command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    transcribe_command.add_arguments(parser)
    return transcribe_command.run(parser.parse_args(argv))


def test_command_beam_size(tiny_en_package, corpus, capsys):
    path = str(corpus / "en" / "jfk_inaugural_1961.wav")
    texts = {}
    for beams in (1, 5):
        assert _command(["--model", str(tiny_en_package.dir), "--threads", "2", "--format", "json",
                         "--beam-size", str(beams), path]) == 0
        texts[beams] = json.loads(capsys.readouterr().out)["text"]
    assert texts[5] != texts[1]  # the option reaches the decoder (beam search adds the comma after "so")
    assert normalize(texts[5]) == normalize(texts[1])
    with pytest.raises(EdgescribeError, match="--beam-size must be 1 or more, got 0"):
        _command(["--model", str(tiny_en_package.dir), "--beam-size", "0", path])
