"""Configuration sections: streams, capture, vad, segmenter (the audio side of the pipeline).

Consumed by daemon/capture.py (streams, capture), daemon/vad.py (vad: the detector and the
speech thresholds that interpret its scores) and daemon/segmenter.py (segmenter). See
schema.py for how a setting is declared.
"""

from __future__ import annotations

import typing
from typing import Literal, Optional

from edgescribe.daemon.config.host import Host, unreadable_file
from edgescribe.daemon.config.schema import Section, setting
from edgescribe.daemon.config.topics import STREAM_NAME_PATTERN, STREAM_NAME_TEXT

SampleFormat = Literal["auto", "S16_LE", "S24_LE", "S24_3LE", "S32_LE", "FLOAT_LE"]
SAMPLE_FORMATS = typing.get_args(SampleFormat)

# How the silence that ends an utterance follows the floor (daemon/segmenter.py applies it;
# kept here so the setting's help states the same numbers). The estimated SNR (dB) at and
# below which noisy_min_silence_s ends an utterance, and at and above which min_silence_s
# does; linear in between. Measured on the corpus mixed with the MIMII factory noises
# (docs/benchmarks.md): the estimate reads within 1-4 dB of the mix's SNR; with pump noise at
# 20 dB, streaming WER was 15.8 / 14.3 / 13.4 % with the quiet end at 20 / 30 / 40 dB (offline
# 10.3 %), so even a moderate floor wants a longer silence. But read speech recorded in a
# quiet room (LibriSpeech) estimates at 30-40 dB, and there the clean latency target needs the
# short silence: 30 dB is where the two meet.
LOUD_FLOOR_SNR_DB = 10.0
QUIET_FLOOR_SNR_DB = 30.0
# On a louder floor still the silence keeps growing, to LOUDEST_EXTRA_SILENCE_S more than
# noisy_min_silence_s at LOUDEST_FLOOR_SNR_DB and below. At 5 dB the detector's dips inside
# sentences outlast the 10-dB silence: pump noise at 5 dB gave +2.2 points over offline with
# 0.45 s and -1.3 with 0.7 s (one run, docs/benchmarks.md has the pooled table). No latency
# target is set that loud, and above 10 dB nothing changes.
LOUDEST_FLOOR_SNR_DB = 5.0
LOUDEST_EXTRA_SILENCE_S = 0.25


class StreamConfig(Section):
    name: str = setting(
        help="Names the stream in transcript topics (<prefix>/<device_id>/<name>/...); unique per device.",
        pattern=STREAM_NAME_PATTERN,
        pattern_text=STREAM_NAME_TEXT,
        example="mic1",
    )
    device: str = setting(
        "",
        "ALSA capture PCM, as listed by 'edgescribe devices': hw:CARD=Device,DEV=0, plughw:1,0, "
        "default, or a PCM named in asound.conf. Prefer CARD=<name> over card numbers: numbers "
        "change when USB devices are plugged in a different order.",
        example="plughw:CARD=Device,DEV=0",
    )
    file: str = setting(
        "",
        "Play this WAV file instead of a device, at real-time pace (demos, benchmarks). "
        "Set either device or file.",
        example="/var/lib/edgescribe/demo.wav",
    )
    rate: int = setting(
        0,
        "Sample rate to open the device at; 0 tries 16000 Hz and takes what the device offers. "
        "Audio is resampled to 16 kHz either way.",
        min=0,
        max=384_000,
        unit="Hz",
    )
    channels: int = setting(
        0,
        "Channels to open the device with; 0 tries mono and takes what the device offers. "
        "Channels are averaged to mono.",
        min=0,
        max=32,
    )
    format: SampleFormat = setting("auto", "Sample format to open the device with; auto tries S16_LE first.")
    speed: float = setting(1.0, "For file: playback speed relative to real time (2.0 = twice as fast).",
                           min=0.01, max=1000.0)
    loop: bool = setting(False, "For file: start again at the end instead of ending the stream.")

    def problems(self) -> list[tuple[str, str]]:
        if bool(self.device) == bool(self.file):
            return [("device", "set exactly one of device (an ALSA PCM) or file (a WAV file)")]
        return []

    def host_problems(self, host: Host) -> list[tuple[str, str]]:
        problem = unreadable_file(self.file) if self.file else None
        return [("file", problem)] if problem else []


class CaptureOptions(Section):
    period_s: float = setting(
        0.1,
        "Audio read from the device at a time. Shorter lowers latency a little and costs CPU.",
        min=0.01,
        max=1.0,
        unit="s",
    )
    buffer_s: float = setting(
        30.0,
        "Audio held between capture and the transcriber per stream. When inference falls further "
        "behind than this, the oldest audio is dropped and reported as a gap.",
        min=1.0,
        max=3600.0,
        unit="s",
    )
    reopen_min_s: float = setting(0.25, "First wait before reopening a missing or unplugged device.",
                                  min=0.01, max=5.0, unit="s")
    reopen_max_s: float = setting(
        4.0,
        "Longest wait between reopen attempts (doubling from reopen_min_s). At most 4.5 s, so "
        "a stream resumes within 5 s of its device returning.",
        min=0.05,
        max=4.5,
        unit="s",
    )

    def problems(self) -> list[tuple[str, str]]:
        if self.reopen_max_s < self.reopen_min_s:
            return [("reopen_max_s", "must not be smaller than reopen_min_s")]
        return []


class VadOptions(Section):
    engine: Literal["silero", "energy"] = setting(
        "silero",
        "silero: neural voice activity detection (bundled ONNX model, robust to machine noise). "
        "energy: loudness above an adaptive noise floor (no model; only for quiet rooms).",
    )
    model_path: Optional[str] = setting(
        None, "Silero VAD ONNX file; empty uses the model shipped with edgescribe.",
        example="/opt/edgescribe/models/silero_vad.onnx",
    )
    energy_margin_db: float = setting(
        10.0, "energy engine: how far above the noise floor a frame must be to count as speech.",
        min=1.0, max=60.0, unit="dB",
    )
    threshold: float = setting(
        0.5, "Speech probability at which an utterance starts.", min=0.01, max=0.99
    )
    off_threshold: float = setting(
        0.35,
        "Speech probability below which a frame counts as silence once speech has started "
        "(lower than threshold, so a soft syllable does not end the utterance).",
        min=0.0,
        max=0.99,
    )

    def problems(self) -> list[tuple[str, str]]:
        if self.off_threshold > self.threshold:
            return [("off_threshold", "must not be above threshold")]
        return []

    def host_problems(self, host: Host) -> list[tuple[str, str]]:
        problem = unreadable_file(self.model_path) if self.model_path else None
        return [("model_path", problem)] if problem else []


class SegmenterOptions(Section):
    min_silence_s: float = setting(
        0.25,
        "Silence that ends an utterance. A final transcript comes this long (plus ~0.1 s for the "
        "detector to notice) after the last word, before inference even starts: 0.25 s leaves "
        "~0.14 s of the 0.5 s end-of-speech latency target for inference. Raise it (0.4-0.6) if "
        "sentences with pauses get split and latency matters less.",
        min=0.05,
        max=5.0,
        unit="s",
    )
    noisy_min_silence_s: float = setting(
        0.45,
        f"Silence that ends an utterance when the floor is loud (estimated SNR {LOUD_FLOOR_SNR_DB:g} dB; "
        f"between {QUIET_FLOOR_SNR_DB:g} and {LOUD_FLOOR_SNR_DB:g} dB the silence moves from min_silence_s "
        f"to this, and below {LOUD_FLOOR_SNR_DB:g} dB it grows by up to {LOUDEST_EXTRA_SILENCE_S:g} s more, "
        f"reached at {LOUDEST_FLOOR_SNR_DB:g} dB). Under machine noise "
        "the speech detector dips between words, and a short silence cuts sentences into pieces "
        "that are transcribed worse apart than together. Set it equal to min_silence_s to turn "
        "the adaptation off.",
        min=0.05,
        max=5.0,
        unit="s",
    )
    pre_roll_s: float = setting(
        0.3, "Audio kept from before the detected start, so soft first consonants are not clipped.",
        min=0.0, max=2.0, unit="s",
    )
    min_speech_s: float = setting(
        0.25,
        "An utterance with less speech than this (counting only frames scored as speech, not "
        "pre-roll or pauses) is discarded and never transcribed: Whisper tends to invent words "
        "for clicks, bumps and short bursts.",
        min=0.0,
        max=10.0,
        unit="s",
    )
    max_utterance_s: float = setting(
        25.0,
        "Longest utterance; longer speech is cut where speech was least likely in the last "
        "cut_search_s and continues as a new utterance. Whisper reads at most 30 s at once.",
        min=2.0,
        max=29.0,
        unit="s",
    )
    cut_search_s: float = setting(
        3.0, "How far back from max_utterance_s the cut point is looked for.",
        min=0.2, max=10.0, unit="s",
    )

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.cut_search_s >= self.max_utterance_s:
            found.append(("cut_search_s", "must be shorter than max_utterance_s"))
        if self.noisy_min_silence_s < self.min_silence_s:
            found.append(("noisy_min_silence_s", "must not be shorter than min_silence_s"))
        return found
