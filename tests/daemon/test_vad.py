"""Voice activity detection on real recordings: corpus speech vs. corpus machine noise."""

from __future__ import annotations

import numpy as np
import pytest

from edgescribe.daemon.config.audio import VadOptions
from edgescribe.daemon.vad import BUNDLED_MODEL, FRAME_SAMPLES, EnergyVad, SileroVad, create_vad, rms_dbfs
from edgescribe.engines.audio import load_audio
from edgescribe.engines.errors import ModelSourceError
from tests.fixtures.scoring import read_transcripts
from tests.fixtures.streaming import mix_at_snr, spoken_stream

SPEECH = ["en/arctic_axb_a0004.wav", "en/lj_LJ001-0002.wav", "en/ls_1089-134686-0000.wav",
          "zh/aishell1_BAC009S0002W0122.wav"]
NOISE = ["noise/factory_mimii_fan.wav", "noise/factory_mimii_pump.wav", "noise/factory_mimii_valve.wav",
         "noise/factory_mimii_slider.wav", "noise/speechcommands_running_tap.wav"]


def probabilities(vad, samples: np.ndarray) -> np.ndarray:
    frames = len(samples) // FRAME_SAMPLES
    return np.array([vad.speech_prob(samples[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]) for i in range(frames)])


@pytest.fixture(scope="module")
def silero():
    return SileroVad()


@pytest.mark.parametrize("name", SPEECH)
def test_silero_finds_speech_in_speech(corpus, silero, name):
    silero.reset()
    probs = probabilities(silero, load_audio(corpus / name))
    assert (probs >= 0.5).mean() > 0.6


@pytest.mark.parametrize("name", NOISE)
def test_silero_ignores_machine_noise(corpus, silero, name):
    silero.reset()
    probs = probabilities(silero, load_audio(corpus / name)[: 16000 * 20])
    assert (probs >= 0.5).mean() < 0.02


def test_silero_is_stateful_and_reset_forgets(corpus, silero):
    speech = load_audio(corpus / SPEECH[0])
    silero.reset()
    first = probabilities(silero, speech)
    continued = probabilities(silero, speech)  # same audio, but after the first pass: other state
    silero.reset()
    again = probabilities(silero, speech)
    np.testing.assert_allclose(first, again, atol=1e-6)
    assert not np.allclose(first[:5], continued[:5], atol=1e-6)


def test_silero_keeps_finding_speech_after_minutes_of_a_loud_floor(corpus):
    """The corpus sentences end to end in continuous fan noise at 5 dB: after a few minutes
    Silero's recurrent state drifts until a whole sentence scores as noise; the detector
    refreshes its state between utterances (daemon/vad.py REFRESH_AFTER_S), so every
    sentence is still found."""
    references = read_transcripts(corpus / "en" / "transcripts.tsv")
    spoken = spoken_stream(corpus, sorted(key for key in references if not key.startswith("long_")))
    mixed = mix_at_snr(spoken.samples, load_audio(corpus / "noise" / "factory_mimii_fan.wav"), 5.0)
    frame_s = FRAME_SAMPLES / 16000

    def worst_sentence(vad) -> float:
        probs = probabilities(vad, mixed)
        times = np.arange(len(probs)) * frame_s
        return min(float((probs[(times > start + 0.3) & (times < end - 0.3)] >= 0.5).mean())
                   for _, start, end in spoken.spans)

    assert worst_sentence(SileroVad(refresh_after_s=float("inf"))) < 0.1  # the drift this guards against
    assert worst_sentence(create_vad(VadOptions())) > 0.4


def test_silero_rejects_wrong_frame_sizes(silero):
    with pytest.raises(ValueError, match="512"):
        silero.speech_prob(np.zeros(480, np.float32))


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelSourceError, match=r"nope\.onnx: no such file"):
        SileroVad(tmp_path / "nope.onnx")


def test_corrupt_model_file_is_a_clear_error(tmp_path):
    corrupt = tmp_path / "silero_vad.onnx"
    corrupt.write_bytes(BUNDLED_MODEL.read_bytes()[:5000])  # truncated download
    with pytest.raises(ModelSourceError, match="not a loadable ONNX model") as info:
        SileroVad(corrupt)
    assert "\n" not in str(info.value)


def test_energy_vad_separates_speech_from_a_quiet_room(corpus):
    speech = load_audio(corpus / "en/lj_LJ001-0005.wav")
    room = load_audio(corpus / "noise/factory_mimii_fan.wav")
    room = room / np.sqrt(np.mean(room**2)) * 10 ** (-55 / 20)  # a quiet room at -55 dBFS
    signal = np.concatenate([room[:32000], speech + room[: len(speech)], room[32000:64000]])
    probs = probabilities(EnergyVad(), signal)
    frames_before = 32000 // FRAME_SAMPLES
    frames_speech = len(speech) // FRAME_SAMPLES
    assert (probs[5:frames_before] >= 0.5).mean() < 0.05  # floor learned within 5 frames
    assert (probs[frames_before : frames_before + frames_speech] >= 0.5).mean() > 0.6
    assert (probs[frames_before + frames_speech + 10 :] >= 0.5).mean() < 0.1


def test_energy_vad_learns_a_louder_machine_within_seconds(corpus):
    fan = load_audio(corpus / "noise/factory_mimii_fan.wav")
    vad = EnergyVad()
    quiet = np.zeros(16000, np.float32) + 1e-4
    probs = probabilities(vad, np.concatenate([quiet, fan]))
    after_start = probs[16000 // FRAME_SAMPLES :]
    assert (after_start[: 8] >= 0.5).mean() > 0.5  # the fan starting looks like sound at first
    assert vad.floor_db > rms_dbfs(fan) - 10  # ... and the floor has risen to it by the end


def test_config_chooses_the_detector(tmp_path):
    assert isinstance(create_vad(VadOptions()), SileroVad)
    assert isinstance(create_vad(VadOptions(engine="energy", energy_margin_db=6.0)), EnergyVad)
    with pytest.raises(ModelSourceError):
        create_vad(VadOptions(model_path=str(tmp_path / "missing.onnx")))


def test_rms_dbfs():
    assert rms_dbfs(np.zeros(100, np.float32)) == -120.0
    assert rms_dbfs(np.ones(100, np.float32)) == pytest.approx(0.0)
    assert rms_dbfs(np.full(100, 0.1, np.float32)) == pytest.approx(-20.0)
