"""Audio in, Whisper's log-mel spectrogram out: WAV reading, resampling, the mel front end.

Everything here is numpy only, so the daemon, the CLI and the tests share one front end.
The spectrogram follows Whisper's recipe exactly (400-sample Hann window, hop 160, power
spectrum without the last frame, log10 clamped to 8 decades below the peak, scaled by
(x + 4) / 4), because the model was trained on exactly those numbers.
"""

from __future__ import annotations

import logging
import math
import struct
from pathlib import Path

import numpy as np

from edgescribe.engines.errors import AudioInputError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # samples in one 30-s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # mel frames in one window: 3000
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_IEEE_FLOAT = 0x0003
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a WAV file as mono float32 in [-1, 1] at ``sample_rate``.

    Accepts 8/16/24/32-bit integer PCM and 32/64-bit float WAV (plain or
    WAVE_FORMAT_EXTENSIBLE), any number of channels (averaged to mono), any rate.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AudioInputError(f"{path}: no such audio file") from None
    except IsADirectoryError:
        raise AudioInputError(f"{path}: is a directory, not an audio file") from None
    except OSError as error:
        raise AudioInputError(f"{path}: cannot read audio file ({error.strerror or error})") from None
    samples, rate = decode_wav(data, source=str(path))
    if rate != sample_rate:
        log.debug("%s: resampling %d Hz -> %d Hz", path, rate, sample_rate)
        samples = resample(samples, rate, sample_rate)
    return samples


def decode_wav(data: bytes, source: str = "<bytes>") -> tuple[np.ndarray, int]:
    """Parse RIFF/WAVE bytes into (mono float32 samples, sample rate).

    A small RIFF parser rather than the stdlib ``wave`` module, because ``wave`` in
    Python 3.11 rejects float and WAVE_FORMAT_EXTENSIBLE files, which recorders write.
    """
    if len(data) < 12 or data[0:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioInputError(f"{source}: not a WAV file (no RIFF/WAVE header)")
    fmt = None
    payload = None
    position = 12
    while position + 8 <= len(data):
        chunk_id = data[position : position + 4]
        (size,) = struct.unpack_from("<I", data, position + 4)
        body = data[position + 8 : position + 8 + size]
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            payload = body  # a truncated data chunk keeps whatever arrived
            break
        position += 8 + size + (size & 1)  # chunks are word aligned
    if fmt is None or len(fmt) < 16:
        raise AudioInputError(f"{source}: corrupt WAV file (missing or short 'fmt ' chunk)")
    if payload is None:
        raise AudioInputError(f"{source}: corrupt WAV file (no 'data' chunk)")

    format_tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if format_tag == _WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        (format_tag,) = struct.unpack_from("<H", fmt, 24)  # first two bytes of the sub-format GUID
    if channels < 1 or rate < 1:
        raise AudioInputError(f"{source}: corrupt WAV file ({channels} channels at {rate} Hz)")
    width = bits // 8
    if format_tag == _WAVE_FORMAT_PCM and bits in (8, 16, 24, 32):
        decoder = _decode_pcm
    elif format_tag == _WAVE_FORMAT_IEEE_FLOAT and bits in (32, 64):
        decoder = _decode_float
    else:
        raise AudioInputError(
            f"{source}: unsupported WAV encoding (format tag {format_tag:#06x}, {bits}-bit); "
            "use integer PCM (8/16/24/32-bit) or 32/64-bit float"
        )
    if block_align != channels * width:
        raise AudioInputError(f"{source}: corrupt WAV file (block align {block_align} for {channels}x{bits}-bit)")

    usable = len(payload) - len(payload) % block_align
    if usable != len(payload):
        log.warning("%s: data chunk ends mid-frame; ignoring the last %d bytes", source, len(payload) - usable)
    samples = decoder(payload[:usable], width).reshape(-1, channels)
    mono = samples.mean(axis=1, dtype=np.float64) if channels > 1 else samples[:, 0]
    return np.ascontiguousarray(mono, dtype=np.float32), rate


def _decode_pcm(payload: bytes, width: int) -> np.ndarray:
    if width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(payload, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 3:
        return decode_s24_3le(payload)
    dtype = {2: "<i2", 4: "<i4"}[width]
    return np.frombuffer(payload, dtype).astype(np.float32) / float(2 ** (8 * width - 1))


def decode_s24_3le(data: bytes) -> np.ndarray:
    """Packed 3-byte little-endian signed samples (24-bit WAV, ALSA S24_3LE) as float32 in [-1, 1]."""
    raw = np.frombuffer(data, np.uint8).reshape(-1, 3)
    # the 3 bytes in the top of an int32: the sign comes for free
    widened = np.zeros((raw.shape[0], 4), np.uint8)
    widened[:, 1:] = raw
    return widened.view("<i4")[:, 0].astype(np.float32) / 2.0**31


def _decode_float(payload: bytes, width: int) -> np.ndarray:
    samples = np.frombuffer(payload, "<f4" if width == 4 else "<f8").astype(np.float32)
    return np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)


def polyphase_filter(up: int, down: int, zero_crossings: int = 16) -> tuple[np.ndarray, int]:
    """Kaiser-windowed sinc low-pass for resampling by ``up/down``, split into ``up`` phases.

    The cut-off sits a little below the lower of the two Nyquist rates (room for the
    transition band), so downsampling does not fold energy above 8 kHz into the speech
    band; the gain ``up`` restores what zero stuffing loses. Shared by :func:`resample`
    (files) and the daemon's streaming resampler (live audio), so both sound the same.
    Returns ``phases[r, k] = prototype[r + k * up]`` and the centre tap index.
    """
    cutoff = 0.5 / max(up, down) * 0.97
    half = zero_crossings * max(up, down)
    t = np.arange(-half, half + 1)
    prototype = 2 * cutoff * np.sinc(2 * cutoff * t) * np.kaiser(2 * half + 1, 8.6) * up
    taps_per_phase = -(-len(prototype) // up)
    prototype = np.pad(prototype, (0, taps_per_phase * up - len(prototype)))
    return prototype.reshape(taps_per_phase, up).T.astype(np.float32), half


def resample(samples: np.ndarray, source_rate: int, target_rate: int = SAMPLE_RATE, zero_crossings: int = 16) -> np.ndarray:
    """Polyphase windowed-sinc (Kaiser) resampling by the exact ratio target/source."""
    if source_rate == target_rate:
        return np.asarray(samples, dtype=np.float32)
    g = math.gcd(source_rate, target_rate)
    up, down = target_rate // g, source_rate // g
    x = np.asarray(samples, dtype=np.float32)
    n_out = -(-len(x) * up // down)
    if n_out == 0:
        return np.zeros(0, np.float32)

    phases, half = polyphase_filter(up, down, zero_crossings)
    taps_per_phase = phases.shape[1]

    padded = np.pad(x, (taps_per_phase, taps_per_phase))
    out = np.empty(n_out, np.float32)
    positions = np.arange(n_out, dtype=np.int64) * down + half
    newest = positions // up  # newest input sample under the filter, before padding
    phase = positions % up
    k = np.arange(taps_per_phase)
    step = 8192  # bounded working memory (step x taps floats)
    for start in range(0, n_out, step):
        stop = min(start + step, n_out)
        idx = newest[start:stop, None] - k[None, :] + taps_per_phase
        idx = np.clip(idx, 0, len(padded) - 1)
        out[start:stop] = np.einsum("nk,nk->n", padded[idx], phases[phase[start:stop]])
    return out


def _hz_to_mel(frequencies: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's htk=False)."""
    frequencies = np.asarray(frequencies, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = frequencies / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_region = frequencies >= min_log_hz
    mels[log_region] = min_log_mel + np.log(frequencies[log_region] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    frequencies = f_sp * mels
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_region = mels >= min_log_mel
    frequencies[log_region] = min_log_hz * np.exp(logstep * (mels[log_region] - min_log_mel))
    return frequencies


def mel_filter_bank(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-normalised triangular filters, equal to librosa.filters.mel(sr, n_fft, n_mels)."""
    fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    mel_points = _mel_to_hz(np.linspace(_hz_to_mel(np.array([0.0]))[0],
                                        _hz_to_mel(np.array([sample_rate / 2.0]))[0], n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_points[2:n_mels + 2] - mel_points[:n_mels]))[:, None]
    return weights.astype(np.float32)


def log_mel(samples: np.ndarray, filters: np.ndarray, padding: int = HOP_LENGTH) -> np.ndarray:
    """Whisper's log-mel spectrogram, float32 [n_mels, frames], for 16-kHz mono audio.

    ``filters`` is the package's ``mel_filters.npy`` ([n_mels, 201], 80 or 128 bins).
    ``padding`` zeros are appended first so the last samples get a full frame, as
    faster-whisper does; frames = (len(samples) + padding) // 160.
    """
    audio = np.asarray(samples, dtype=np.float32)
    if padding:
        audio = np.pad(audio, (0, padding))
    audio = np.pad(audio, (N_FFT // 2, N_FFT // 2), mode="reflect" if len(audio) > 1 else "constant")
    window = np.hanning(N_FFT + 1)[:-1].astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(audio, N_FFT)[::HOP_LENGTH]
    spectrum = np.fft.rfft(frames * window, axis=-1)[:-1]  # Whisper drops the last frame
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel = filters.astype(np.float32, copy=False) @ power.T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32, copy=False)


def pad_or_trim(mel: np.ndarray, frames: int = N_FRAMES) -> np.ndarray:
    """Cut or zero-pad the last axis of a log-mel array to ``frames`` (one 30-s window).

    Zero padding in the log-mel domain, as faster-whisper does, so windows here match
    its reference output.
    """
    length = mel.shape[-1]
    if length > frames:
        return mel[..., :frames]
    if length < frames:
        widths = [(0, 0)] * (mel.ndim - 1) + [(0, frames - length)]
        return np.pad(mel, widths)
    return mel
