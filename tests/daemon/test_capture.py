"""Capture through real ALSA (file-plugin PCMs via pyalsaaudio) and from WAV files."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgescribe.daemon.capture import AlsaSource, CaptureStream, Overrun, StreamingResampler, WavSource, to_mono
from edgescribe.daemon.config.audio import CaptureOptions, StreamConfig
from edgescribe.daemon.events import GapEvent, StreamStateEvent
from edgescribe.engines.audio import load_audio, resample
from edgescribe.engines.errors import AudioInputError
from tests.fixtures.alsa import SPEECH_FILE, AlsaDevices, alsa_devices  # noqa: F401 (fixture)


def read_frames(source: AlsaSource, frames: int) -> list[np.ndarray]:
    """Blocks covering exactly ``frames`` device frames (the file PCM repeats stale data after its end)."""
    blocks, got = [], 0
    while got < frames:
        block = source.read()
        blocks.append(block[: frames - got])
        got += len(blocks[-1])
    return blocks


def test_16k_mono_pcm_delivers_the_files_samples(alsa_devices: AlsaDevices):
    source = AlsaSource("speech16k", period_s=0.1)
    try:
        description = source.open()
        assert (source.settings.rate, source.settings.channels, source.settings.sample_format) == (16000, 1, "S16_LE")
        assert "16000 Hz" in description
        captured = np.concatenate(read_frames(source, len(alsa_devices.speech16k)))
    finally:
        source.close()
    np.testing.assert_array_equal(captured, alsa_devices.speech16k)


@pytest.mark.parametrize("device,sample_format", [("speech48k", "S16_LE"), ("speech48k_s32", "S32_LE")])
def test_48k_stereo_pcm_is_downmixed_and_resampled(alsa_devices: AlsaDevices, device, sample_format):
    source = AlsaSource(device, period_s=0.1, rate=48000, channels=2, sample_format=sample_format)
    resampler = StreamingResampler(48000)
    try:
        source.open()
        assert (source.settings.rate, source.settings.channels, source.settings.sample_format) == (
            48000, 2, sample_format)
        blocks = read_frames(source, len(alsa_devices.speech48k_stereo))
    finally:
        source.close()
    device_mono = np.concatenate(blocks)
    expected_mono = alsa_devices.speech48k_stereo.astype(np.float32).mean(axis=1) / 32768.0
    np.testing.assert_allclose(device_mono, expected_mono, atol=1e-6)

    live = np.concatenate([resampler.process(block) for block in blocks])
    reference = alsa_devices.reference_48k_to_16k()
    assert len(reference) - 20 <= len(live) <= len(reference)  # the filter's tail waits for more input
    np.testing.assert_allclose(live, reference[: len(live)], atol=1e-5)
    # and it is the speech itself (at 0.75 level after the down-mix), not just self-consistent
    speech = alsa_devices.speech16k[: len(live)]
    assert np.corrcoef(live[1000:-1000], speech[1000:-1000])[0, 1] > 0.999


def test_missing_device_raises_a_clear_error(alsa_devices: AlsaDevices):
    with pytest.raises(AudioInputError, match="'no_such_mic'"):
        AlsaSource("no_such_mic").open()


@pytest.mark.slow  # waits for the reopen backoff to reach its cap: ~8 s
def test_device_missing_at_start_goes_down_then_up_within_5s_of_appearing(alsa_devices: AlsaDevices):
    events: list = []
    changed = threading.Condition()

    def on_event(event):
        with changed:
            events.append(event)
            changed.notify_all()

    def wait_for(state: str, timeout: float) -> StreamStateEvent:
        with changed:
            changed.wait_for(lambda: any(isinstance(e, StreamStateEvent) and e.state == state for e in events), timeout)
        found = [e for e in events if isinstance(e, StreamStateEvent) and e.state == state]
        assert found, f"no '{state}' event within {timeout} s; got {events}"
        return found[0]

    stream = CaptureStream(StreamConfig(name="late", device="late_mic"), CaptureOptions(buffer_s=1.0), on_event)
    stream.start()
    try:
        down = wait_for("down", 2.0)
        assert "late_mic" in down.detail
        assert stream.stats().state == "down"
        time.sleep(4.0)  # long enough for the retry backoff to reach its cap
        plugged_at = time.time()
        alsa_devices.plug_in_late_mic()
        up = wait_for("up", 6.0)
        assert up.wall_time - plugged_at < 5.0
        assert stream.stats().state == "up"
        block = stream.get(timeout=2.0)
        assert block is not None and block.stream == "late"
        # audio time kept pace with the wall clock while the device was away
        assert block.audio_start >= 4.0
    finally:
        stream.stop()
    assert stream.stats().state == "stopped"


def test_wav_stream_delivers_contiguous_blocks_and_ends(corpus):
    path = corpus / "en" / "arctic_axb_a0005.wav"
    events: list = []
    stream = CaptureStream(StreamConfig(name="wav", file=str(path), speed=8.0), CaptureOptions(), events.append)
    started, started_wall = time.monotonic(), time.time()
    stream.start()
    blocks, levels_while_up = [], []
    deadline = time.monotonic() + 10
    while not stream.finished and time.monotonic() < deadline:
        block = stream.get(timeout=0.5)
        if block is not None:
            blocks.append(block)
        stats = stream.stats()
        if stats.state == "up":
            levels_while_up.append(stats.level_dbfs)
    elapsed = time.monotonic() - started
    stream.stop()

    expected = load_audio(path)
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks]), expected)
    starts = np.array([b.audio_start for b in blocks])
    np.testing.assert_allclose(starts, np.cumsum([0] + [len(b.samples) for b in blocks[:-1]]) / 16000, atol=1e-9)
    assert elapsed >= len(expected) / 16000 / 8.0 * 0.9  # paced, not dumped at once
    # A block's wall time is when its first sample was "spoken": at 8x a 0.1-s block takes 12.5 ms,
    # so none can start before the stream did (latency figures count from these times).
    assert started_wall - 0.005 <= blocks[0].wall_time <= started_wall + 0.1
    wall = np.array([b.wall_time for b in blocks])
    np.testing.assert_allclose(wall - wall[0], (starts - starts[0]) / 8.0, atol=0.05)
    assert [e.state for e in events if isinstance(e, StreamStateEvent)] == ["up", "down"]
    assert not [e for e in events if isinstance(e, GapEvent)]
    assert stream.stats().blocks == len(blocks)
    assert levels_while_up and max(levels_while_up) > -40  # speech level over the last second
    assert stream.stats().level_dbfs == -120.0  # ended: no level


def test_stalled_consumer_loses_the_oldest_audio_and_is_told_how_much(corpus):
    path = corpus / "en" / SPEECH_FILE.split("/")[1]
    events: list = []
    stream = CaptureStream(
        StreamConfig(name="slow", file=str(path), speed=50.0), CaptureOptions(buffer_s=1.0), events.append
    )
    stream.start()
    deadline = time.monotonic() + 10
    ended = lambda: any(isinstance(e, StreamStateEvent) and e.state == "down" for e in events)  # noqa: E731
    while not ended() and time.monotonic() < deadline:
        time.sleep(0.05)  # the consumer stalls until the whole file is captured
    kept = []
    while (block := stream.get(timeout=0.5)) is not None:
        kept.append(block)
    stream.stop()

    total = len(load_audio(path)) / 16000
    gaps = [e for e in events if isinstance(e, GapEvent)]
    assert gaps and all(g.reason == "overflow" and g.stream == "slow" for g in gaps)
    lost = sum(g.duration_s for g in gaps)
    kept_s = sum(len(b.samples) for b in kept) / 16000
    assert lost + kept_s == pytest.approx(total, abs=1e-6)
    assert 0.9 <= kept_s <= 1.0  # what fits in the 1-s buffer survives: the NEWEST audio
    assert gaps[0].audio_start == 0.0
    assert gaps[-1].audio_start + gaps[-1].duration_s == pytest.approx(kept[0].audio_start, abs=1e-6)
    assert kept[-1].audio_end == pytest.approx(total, abs=1e-6)
    assert stream.stats().dropped_s == pytest.approx(lost, abs=1e-6)


class OverrunningWav(WavSource):
    """A WAV source whose device stalls for ``stall_s`` before its 5th read and then reports an
    overrun, as ALSA does when the reader was late: stands in for an xrun, which the file PCM
    (not paced) cannot produce."""

    def __init__(self, *args, stall_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.stall_s = stall_s
        self.reads = 0

    def read(self):
        self.reads += 1
        if self.reads == 5:
            time.sleep(self.stall_s)
            self._started += self.stall_s  # the lost audio is not delivered later
            raise Overrun("simulated")
        return super().read()


@pytest.mark.parametrize("speed", [1.0, 2.0])
def test_overrun_is_counted_and_reported_as_a_gap_of_the_lost_time(corpus, speed):
    events: list = []
    path = corpus / "en" / "arctic_axb_a0005.wav"
    source = OverrunningWav(path, period_s=0.1, speed=speed, stall_s=0.4)
    stream = CaptureStream(StreamConfig(name="x", file=str(path)), CaptureOptions(), events.append, source=source)
    stream.start()
    blocks = []
    deadline = time.monotonic() + 10
    while not stream.finished and time.monotonic() < deadline and len(blocks) < 8:
        block = stream.get(timeout=0.5)
        if block is not None:
            blocks.append(block)
    stream.stop()
    gaps = [e for e in events if isinstance(e, GapEvent)]
    assert len(gaps) == 1 and gaps[0].reason == "xrun"
    assert gaps[0].duration_s == pytest.approx(0.4 * speed, abs=0.1 * speed)  # a 0.4-s stall, in audio seconds
    assert gaps[0].audio_start == pytest.approx(0.4, abs=1e-6)  # after 4 blocks of 0.1 s
    assert blocks[4].audio_start == pytest.approx(0.4 + gaps[0].duration_s, abs=1e-6)
    assert stream.stats().xruns == 1


@pytest.mark.parametrize("sample_format,dtype,scale", [("S16_LE", "<i2", 2**15), ("S32_LE", "<i4", 2**31)])
def test_to_mono_averages_channels(sample_format, dtype, scale):
    frames = np.array([[scale // 2, 0], [-scale // 2, -scale // 4]], dtype=dtype)
    np.testing.assert_allclose(to_mono(frames.tobytes(), sample_format, 2), [0.25, -0.375])


def test_to_mono_24_bit_formats():
    values = np.array([0x400000, -0x200000], np.int32)  # +0.5, -0.25 of 24-bit full scale
    packed = values.astype("<i4").tobytes()
    np.testing.assert_allclose(to_mono(packed, "S24_LE", 1), [0.5, -0.25])
    three = b"".join(v.to_bytes(4, "little", signed=True)[:3] for v in values.tolist())
    np.testing.assert_allclose(to_mono(three, "S24_3LE", 1), [0.5, -0.25])


@pytest.mark.parametrize("rate", [48000, 44100, 8000])
def test_streaming_resampler_matches_offline_resampling_in_any_block_sizes(corpus, rate):
    speech = load_audio(corpus / "en" / "arctic_axb_a0005.wav", sample_rate=rate)
    reference = resample(speech, rate, 16000)
    resampler = StreamingResampler(rate)
    rng = np.random.default_rng(rate)
    cuts = np.sort(rng.integers(0, len(speech), 40))
    live = np.concatenate([resampler.process(part) for part in np.split(speech, cuts)])
    assert len(reference) - 40 <= len(live) <= len(reference)  # the tail waits for input (<= 2.5 ms)
    np.testing.assert_allclose(live, reference[: len(live)], atol=1e-6)


class UnpluggedWav(WavSource):
    """A WAV source whose device disappears at its 4th read and cannot be opened for
    ``away_s`` seconds: stands in for a USB microphone pulled mid-stream (the file PCM
    cannot fail a read)."""

    def __init__(self, *args, away_s: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.away_s = away_s
        self.reads = 0
        self.gone_until = 0.0

    def open(self):
        if time.monotonic() < self.gone_until:
            raise AudioInputError("ALSA capture device 'usb': cannot open (No such device)")
        return super().open()

    def read(self):
        self.reads += 1
        if self.reads == 4:
            self.gone_until = time.monotonic() + self.away_s
            raise AudioInputError("ALSA capture device 'usb': read failed (No such device)")
        return super().read()


def test_device_unplugged_while_running_goes_down_and_comes_back(corpus):
    events: list = []
    path = corpus / "en" / "arctic_axb_a0005.wav"
    source = UnpluggedWav(path, period_s=0.1, speed=4.0, away_s=1.0)
    options = CaptureOptions(reopen_min_s=0.1, reopen_max_s=0.4)
    stream = CaptureStream(StreamConfig(name="u", file=str(path)), options, events.append, source=source)
    stream.start()
    blocks = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(blocks) < 6:
        block = stream.get(timeout=0.5)
        if block is not None:
            blocks.append(block)
    stats = stream.stats()
    stream.stop()
    states = [(e.state, e.detail) for e in events if isinstance(e, StreamStateEvent)]
    assert [s for s, _ in states[:3]] == ["up", "down", "up"]
    assert "No such device" in states[1][1]
    assert stats.reopens == 1
    # blocks 0-2 from the first open, then the file again from its start after the reopen;
    # audio time jumped by the ~1 s the device was away
    assert blocks[3].audio_start - blocks[2].audio_end == pytest.approx(1.0, abs=0.5)
    np.testing.assert_array_equal(blocks[3].samples, blocks[0].samples)
