"""WAV reading, resampling and the log-mel front end (engines/audio.py)."""

from __future__ import annotations

import struct
import wave

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from edgescribe.engines.audio import (
    N_FRAMES,
    decode_wav,
    load_audio,
    log_mel,
    pad_or_trim,
    resample,
)
from edgescribe.engines.errors import AudioInputError


def _wav_bytes(samples: np.ndarray, rate: int, bits: int, channels: int = 1, float_format: bool = False,
               extensible: bool = False) -> bytes:
    """A WAV file built by hand, so the reader is tested against the format, not against itself."""
    frames = np.repeat(samples[:, None], channels, axis=1) if samples.ndim == 1 else samples
    if float_format:
        payload = frames.astype("<f4" if bits == 32 else "<f8").tobytes()
    elif bits == 8:
        payload = np.clip(np.round(frames * 128 + 128), 0, 255).astype(np.uint8).tobytes()
    elif bits == 24:
        ints = np.clip(np.round(frames * 2**23), -2**23, 2**23 - 1).astype("<i4")
        payload = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        scale = 2 ** (bits - 1)
        ints = np.clip(np.round(frames * scale), -scale, scale - 1).astype({16: "<i2", 32: "<i4"}[bits])
        payload = ints.tobytes()
    tag = 3 if float_format else 1
    block = channels * bits // 8
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, 0) + struct.pack("<H", tag) + guid_tail
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    # a LIST chunk before the data chunk, as many recorders write, must be skipped
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", 5) + b"abcde\x00"
    chunks += b"data" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


@pytest.fixture(scope="module")
def speech(corpus):
    samples, rate = decode_wav((corpus / "en" / "jfk_inaugural_1961.wav").read_bytes())
    assert rate == 16000
    return samples


@pytest.mark.parametrize("bits,float_format,tolerance", [
    (8, False, 1 / 127), (16, False, 1 / 32767), (24, False, 1 / 2**23), (32, False, 1 / 2**31),
    (32, True, 1e-7), (64, True, 1e-7),
])
def test_reads_every_sample_format(bits, float_format, tolerance):
    rng = np.random.default_rng(1)
    original = rng.uniform(-0.9, 0.9, 4000).astype(np.float32)
    decoded, rate = decode_wav(_wav_bytes(original, 16000, bits, float_format=float_format))
    assert rate == 16000 and decoded.dtype == np.float32 and decoded.shape == original.shape
    assert np.abs(decoded - original).max() <= tolerance * 1.01


def test_stdlib_written_16bit_file_matches(tmp_path, speech):
    path = tmp_path / "speech.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((speech * 32768).astype("<i2").tobytes())
    assert np.array_equal(load_audio(path), speech)


def test_multichannel_is_averaged_to_mono():
    left = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    right = np.full(1000, 0.25, np.float32)
    stereo = np.stack([left, right], axis=1)
    decoded, _ = decode_wav(_wav_bytes(stereo, 16000, 32, channels=2, float_format=True, extensible=True))
    np.testing.assert_allclose(decoded, (left + right) / 2, atol=1e-7)


def test_other_rates_are_resampled_to_16k(tmp_path, speech):
    """48 kHz stereo of the same speech gives nearly the same 16-kHz samples and spectrogram."""
    up = resample(speech, 16000, 48000)
    path = tmp_path / "48k.wav"
    path.write_bytes(_wav_bytes(up, 48000, 16, channels=2))
    back = load_audio(path)
    assert abs(len(back) - len(speech)) <= 1
    n = min(len(back), len(speech))
    error = back[:n] - speech[:n]
    assert np.sqrt(np.mean(error**2)) < 0.01 * np.sqrt(np.mean(speech**2))


@pytest.mark.parametrize("source_rate", [8000, 11025, 22050, 44100, 48000])
def test_resampler_keeps_tones_and_length(source_rate):
    t = np.arange(source_rate) / source_rate
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    out = resample(tone, source_rate, 16000)
    assert len(out) == 16000
    expected = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert np.abs(out - expected)[300:-300].max() < 1e-3


def test_resampler_removes_frequencies_above_the_new_nyquist():
    t = np.arange(48000) / 48000
    tone = np.sin(2 * np.pi * 11000 * t).astype(np.float32)  # would alias to 5 kHz
    assert np.abs(resample(tone, 48000, 16000))[300:-300].max() < 1e-3


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_faster_whisper_on_the_corpus(corpus, n_mels):
    extractor = FeatureExtractor(feature_size=n_mels)
    files = sorted((corpus / "en").glob("*.wav"))[:8] + sorted((corpus / "zh").glob("*.wav"))[:2]
    for path in files:
        samples = load_audio(path)
        ours = log_mel(samples, extractor.mel_filters)
        reference = extractor(samples)
        assert ours.shape == reference.shape == (n_mels, len(samples) // 160 + 1)
        np.testing.assert_allclose(ours, reference, atol=2e-5, err_msg=str(path))


def test_log_mel_of_silence_and_tiny_input_is_finite():
    filters = FeatureExtractor(80).mel_filters
    for samples in (np.zeros(16000, np.float32), np.zeros(0, np.float32), np.ones(10, np.float32)):
        mel = log_mel(samples, filters)
        assert mel.shape[0] == 80 and np.isfinite(mel).all()


def test_pad_or_trim():
    mel = np.ones((80, 1234), np.float32)
    padded = pad_or_trim(mel)
    assert padded.shape == (80, N_FRAMES) and padded[:, 1234:].sum() == 0 and padded[:, :1234].all()
    assert pad_or_trim(np.ones((2, 80, 4000)), 3000).shape == (2, 80, 3000)


@pytest.mark.parametrize("content,message", [
    (b"", "not a WAV file"),
    (b"ID3\x03\x00" + b"\x00" * 100, "not a WAV file"),
    (b"RIFF\x10\x00\x00\x00WAVEdata\x00\x00\x00\x00", "missing or short 'fmt ' chunk"),
    (b"RIFF\x1c\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16), "no 'data' chunk"),
    (_wav_bytes(np.zeros(10, np.float32), 16000, 16)[:20] + struct.pack("<H", 2) + _wav_bytes(np.zeros(10, np.float32), 16000, 16)[22:],
     "unsupported WAV encoding"),
])
def test_bad_files_raise_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioInputError, match=message) as raised:
        load_audio(path)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(AudioInputError, match="no such audio file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioInputError, match="is a directory"):
        load_audio(tmp_path)
