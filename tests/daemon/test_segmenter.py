"""Segmentation of real speech: boundaries, pre-roll, update pacing, max-length cuts, gaps, loud floors."""

from __future__ import annotations

import numpy as np
import pytest

from edgescribe.daemon.capture import AudioBlock
from edgescribe.daemon.config.audio import LOUD_FLOOR_SNR_DB, LOUDEST_EXTRA_SILENCE_S, SegmenterOptions
from edgescribe.daemon.segmenter import PAUSE_AFTER_S, Segmenter, cut_frame
from edgescribe.daemon.vad import FRAME_SAMPLES, EnergyVad, SileroVad
from edgescribe.engines.audio import load_audio

RATE = 16000
BLOCK = 1600  # 0.1 s, as capture delivers


def speech_bounds(samples: np.ndarray, level_db: float = -40.0) -> tuple[float, float]:
    """First and last 20-ms window louder than ``level_db``: where the talker starts and stops."""
    windows = samples[: len(samples) // 320 * 320].reshape(-1, 320)
    loud = np.nonzero(10 * np.log10(np.mean(windows**2, axis=1) + 1e-12) > level_db)[0]
    return loud[0] * 320 / RATE, (loud[-1] + 1) * 320 / RATE


def run(segmenter: Segmenter, signal: np.ndarray, start: float = 0.0, wall: float = 1_700_000_000.0):
    out = []
    for i in range(0, len(signal), BLOCK):
        out += segmenter.push(AudioBlock("mic", signal[i : i + BLOCK], start + i / RATE, wall + i / RATE))
    return out + segmenter.flush()


@pytest.fixture(scope="module")
def two_utterances(corpus):
    """Machine-room noise at -45 dBFS with two corpus utterances, 1.5 s apart."""
    a = load_audio(corpus / "en/arctic_axb_a0004.wav")
    b = load_audio(corpus / "en/lj_LJ001-0004.wav")
    fan = load_audio(corpus / "noise/factory_mimii_fan.wav")
    fan = fan / np.sqrt(np.mean(fan**2)) * 10 ** (-45 / 20)
    parts = [np.zeros(RATE), a, np.zeros(int(1.5 * RATE)), b, np.zeros(RATE)]
    signal = np.concatenate(parts).astype(np.float32)
    signal += np.resize(fan, len(signal))
    a_start = 1.0
    b_start = 1.0 + len(a) / RATE + 1.5
    truth = [(a_start + s, a_start + e) for s, e in [speech_bounds(a)]]
    truth += [(b_start + s, b_start + e) for s, e in [speech_bounds(b)]]
    return signal, truth


def test_two_utterances_with_boundaries_near_the_speech(two_utterances):
    signal, truth = two_utterances
    options = SegmenterOptions()
    updates = run(Segmenter("mic", options, SileroVad()), signal)
    finals = [u for u in updates if u.ended]
    assert len(finals) == 2
    for final, (start, end) in zip(finals, truth):
        # starts with the pre-roll before the first word; ends min_silence_s after the last
        assert final.audio_start == pytest.approx(start - options.pre_roll_s, abs=0.2)
        assert final.audio_end == pytest.approx(end + options.min_silence_s, abs=0.25)
        # the utterance is exactly the stream's audio over its span
        first = round(final.audio_start * RATE)
        np.testing.assert_array_equal(final.samples, signal[first : first + len(final.samples)])
        assert final.wall_start == pytest.approx(1_700_000_000.0 + final.audio_start, abs=1e-3)
    assert finals[0].utterance_id != finals[1].utterance_id
    assert finals[0].utterance_id.startswith("mic-")


def test_pre_roll_is_included(two_utterances):
    signal, truth = two_utterances
    without = [u for u in run(Segmenter("mic", SegmenterOptions(pre_roll_s=0.0), SileroVad()), signal) if u.ended]
    with_pre = [u for u in run(Segmenter("mic", SegmenterOptions(pre_roll_s=0.5), SileroVad()), signal) if u.ended]
    for a, b in zip(without, with_pre):
        assert a.audio_start - b.audio_start == pytest.approx(0.5, abs=0.033)  # whole 32-ms frames
        assert a.audio_end == pytest.approx(b.audio_end)
        np.testing.assert_array_equal(b.samples[-len(a.samples):], a.samples)


def test_updates_come_every_interval_and_end_exactly_once(two_utterances):
    signal, _ = two_utterances
    options = SegmenterOptions()
    updates = run(Segmenter("mic", options, SileroVad(), update_interval_s=1.0), signal)
    for utterance_id in {u.utterance_id for u in updates}:
        mine = [u for u in updates if u.utterance_id == utterance_id]
        assert [u.ended for u in mine] == [False] * (len(mine) - 1) + [True]
        # pause updates come off the schedule as well (see the next test); the periodic ones
        # are every non-pause update and each pause that fell due anyway
        last = len(mine[0].samples) / RATE
        for u in mine[1:-1]:
            step = len(u.samples) / RATE - last
            if u.pause and step < 1.0 - 1e-6:
                continue
            assert 1.0 - 1e-6 <= step < 1.0 + 0.033  # at most one frame late
            last += step
        assert len(mine[-1].samples) / RATE - last <= 1.0 + 0.033 + options.min_silence_s
        # every update is the same utterance growing: a prefix of the final
        for u in mine[:-1]:
            np.testing.assert_array_equal(u.samples, mine[-1].samples[: len(u.samples)])
            assert u.audio_start == mine[-1].audio_start
    assert len(updates) > 6  # ~3 s and ~7 s of speech


def test_a_pause_update_comes_after_a_short_silence_whatever_the_interval(two_utterances):
    signal, _ = two_utterances
    # the quiet-floor rule (a loud floor lengthens both waits: see the floor tests below)
    options = SegmenterOptions(noisy_min_silence_s=SegmenterOptions().min_silence_s)
    updates = run(Segmenter("mic", options, SileroVad(), update_interval_s=None), signal)  # no periodic update at all
    ended = [u for u in updates if u.ended]
    assert len(ended) == 2
    for final in ended:
        pauses = [u for u in updates if u.utterance_id == final.utterance_id and not u.ended]
        assert pauses and all(u.pause for u in pauses)  # the only updates besides the end
        for pause in pauses:
            # sent once the silence reached PAUSE_AFTER_S (whole frames): a soft word ending
            # that scored as silence is in it, and the end is still min_silence_s away
            frames = (len(pause.samples) - pause.speech_end) / FRAME_SAMPLES
            assert frames == int(np.ceil(PAUSE_AFTER_S * RATE / FRAME_SAMPLES - 1e-9)) and frames > 1
            np.testing.assert_array_equal(pause.samples, final.samples[: len(pause.samples)])
        # the last pause is where the speech really ended: nothing but silence came after it,
        # and the end came min_silence_s (rounded up to whole frames) after the speech
        assert final.speech_end == pauses[-1].speech_end
        silence = (len(final.samples) - final.speech_end) / RATE
        assert options.min_silence_s - 1e-6 <= silence < options.min_silence_s + FRAME_SAMPLES / RATE


def test_max_length_cuts_in_a_quiet_moment_and_continues(corpus):
    speech = np.concatenate([load_audio(corpus / f"en/lj_LJ001-000{i}.wav") for i in (5, 6, 7)])
    options = SegmenterOptions(max_utterance_s=8.0, cut_search_s=3.0, min_silence_s=1.0)
    segmenter = Segmenter("mic", options, SileroVad())
    finals = [u for u in run(segmenter, speech) if u.ended]
    assert len(finals) >= 3
    cuts = 0
    for before, after in zip(finals, finals[1:]):
        if after.audio_start - before.audio_end > 1e-6:
            continue  # ended by silence, not cut
        cuts += 1
        assert len(before.samples) / RATE >= options.max_utterance_s - options.cut_search_s - 0.05
        assert after.audio_start == pytest.approx(before.audio_end, abs=1e-6)  # nothing lost or repeated
        # the cut sits in the quietest 5% of the searched stretch
        cut = round(before.audio_end * RATE)
        search = speech[cut - int(1.5 * RATE) : cut + int(1.5 * RATE)]
        windows = search[: len(search) // 320 * 320].reshape(-1, 320)
        energy = np.mean(windows**2, axis=1)
        at_cut = np.mean(speech[cut - 160 : cut + 160] ** 2)
        assert at_cut <= np.quantile(energy, 0.05)
    assert cuts >= 2  # 22 s of unbroken reading, 8-s limit
    assert segmenter.length_cuts == cuts
    joined = np.concatenate([u.samples for u in finals])
    first = round(finals[0].audio_start * RATE)
    np.testing.assert_array_equal(joined, speech[first : first + len(joined)])


def test_short_bursts_are_discarded(corpus):
    room = np.full(3 * RATE, 1e-4, np.float32)
    room[RATE : RATE + 1600] = 0.5 * np.sin(np.arange(1600) * 0.3)  # a 0.1-s clank
    segmenter = Segmenter("mic", SegmenterOptions(min_speech_s=0.25), EnergyVad())
    assert run(segmenter, room) == [] and segmenter.discarded_bursts == 1
    room[RATE : RATE + 8000] = 0.5 * np.sin(np.arange(8000) * 0.3)  # 0.5 s of loud sound
    finals = [u for u in run(Segmenter("mic", SegmenterOptions(min_speech_s=0.25), EnergyVad()), room) if u.ended]
    assert len(finals) == 1


def test_a_gap_in_the_audio_ends_the_utterance(corpus):
    speech = load_audio(corpus / "en/lj_LJ001-0005.wav")
    segmenter = Segmenter("mic", SegmenterOptions(), SileroVad())
    out = []
    for i in range(0, 4 * RATE, BLOCK):
        out += segmenter.push(AudioBlock("mic", speech[i : i + BLOCK], i / RATE, 0.0))
    assert not any(u.ended for u in out)
    # 2 s of audio lost (ring overflow); the next block starts later in audio time
    after = segmenter.push(AudioBlock("mic", speech[4 * RATE : 4 * RATE + BLOCK], 6.0, 0.0))
    assert [u.ended for u in after] == [True]
    assert after[0].audio_end <= 4.0 + 1e-6


def test_flush_closes_the_open_utterance(corpus):
    speech = load_audio(corpus / "en/lj_LJ001-0005.wav")[: 3 * RATE]
    segmenter = Segmenter("mic", SegmenterOptions(), SileroVad())
    out = []
    for i in range(0, len(speech), BLOCK):
        out += segmenter.push(AudioBlock("mic", speech[i : i + BLOCK], i / RATE, 0.0))
    assert not any(u.ended for u in out)
    final = segmenter.flush()
    assert len(final) == 1 and final[0].ended
    assert final[0].audio_end == pytest.approx(3.0, abs=1e-6)  # including the last partial frame
    assert segmenter.flush() == []


def test_the_cut_goes_where_the_detector_heard_no_speech():
    """Under steady noise the quietest instant can fall inside a word; the cut follows the detector."""
    def frame(level):
        return np.full(FRAME_SAMPLES, level, np.float32)

    frames, probs = [frame(0.3) for _ in range(60)], [0.9] * 60
    frames[20], probs[20] = frame(0.003), 0.5  # a stop consonant's closure: quiet, but inside a word
    probs[36:45] = [0.05] * 9  # a real pause: no quieter than the words, but the detector is sure
    assert 36 <= cut_frame(probs, frames, 0, 60, pause_below=0.35) <= 44
    frames[41:44] = [frame(0.03)] * 3  # within the pause, the quietest moment
    assert cut_frame(probs, frames, 0, 60, pause_below=0.35) == 42
    probs[36:45] = [0.9] * 9  # no pause heard at all: the quietest ~100 ms
    assert cut_frame(probs, frames, 0, 60, pause_below=0.35) == 42
    frames[41:44] = [frame(0.3)] * 3
    assert 19 <= cut_frame(probs, frames, 0, 60, pause_below=0.35) <= 21


def in_noise(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech`` with 2 s of lead and tail, and ``noise`` running throughout at ``snr_db``."""
    padded = np.concatenate([np.zeros(2 * RATE, np.float32), speech, np.zeros(2 * RATE, np.float32)])
    looped = np.resize(noise, len(padded)).astype(np.float64)
    gain = np.sqrt(np.mean(speech.astype(np.float64) ** 2)) / (np.sqrt(np.mean(looped**2)) * 10 ** (snr_db / 20))
    return (padded + gain * looped).astype(np.float32)


def test_a_loud_floor_needs_a_longer_silence_to_end_an_utterance(corpus):
    speech = load_audio(corpus / "en/ls_1998-15444-0002.wav")
    pump = load_audio(corpus / "noise/factory_mimii_pump.wav")
    options = SegmenterOptions()
    quiet = Segmenter("mic", options, SileroVad())
    run(quiet, in_noise(speech, pump, 60.0))
    loud = Segmenter("mic", options, SileroVad(), update_interval_s=None)
    updates = run(loud, in_noise(speech, pump, 5.0))
    assert quiet.snr_db > 40 and quiet.silence_to_end() == options.min_silence_s
    assert loud.snr_db < LOUD_FLOOR_SNR_DB
    assert options.noisy_min_silence_s < loud.silence_to_end() <= options.noisy_min_silence_s + LOUDEST_EXTRA_SILENCE_S
    # the last utterance ended after the long silence, and its pause update waited for it too
    last = [u for u in updates if u.utterance_id == updates[-1].utterance_id]
    assert (len(last[-1].samples) - last[-1].speech_end) / RATE >= options.noisy_min_silence_s - 1e-6
    pause = [u for u in last if u.pause][-1]
    assert (len(pause.samples) - pause.speech_end) / RATE >= options.noisy_min_silence_s - 0.2 - 1e-6


def test_a_sentence_in_factory_noise_is_not_cut_at_false_pauses(corpus):
    """A 9-s sentence that a quiet room cuts once (at a real pause) and pump noise at 10 dB
    cut twice with the quiet room's silence rule: with the floor-aware rule it is cut no
    more often than in the quiet room."""
    speech = load_audio(corpus / "en/ls_1998-15444-0002.wav")
    pump = load_audio(corpus / "noise/factory_mimii_pump.wav")

    def pieces(signal, options):
        return sum(u.ended for u in run(Segmenter("mic", options, SileroVad()), signal))

    quiet_room = pieces(in_noise(speech, pump, 60.0), SegmenterOptions())
    noisy = in_noise(speech, pump, 10.0)
    fixed_silence = pieces(noisy, SegmenterOptions(noisy_min_silence_s=SegmenterOptions().min_silence_s))
    floor_aware = pieces(noisy, SegmenterOptions())
    assert fixed_silence > quiet_room >= floor_aware >= 1
