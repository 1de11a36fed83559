"""The inference scheduler and engine manager, with real Whisper packages (tiny.en, base).

Order and batching are made deterministic by queuing requests before the worker starts
(or while a decode call is held), then counting what each decode call received.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgescribe.daemon.capture import CaptureStream
from edgescribe.daemon.config.audio import CaptureOptions, StreamConfig
from edgescribe.daemon.config.transcription import TranscriptionConfig
from edgescribe.daemon.events import ModelEvent
from edgescribe.daemon.scheduler import DecodeRequest, EngineManager, InferenceScheduler, _after_context
from edgescribe.daemon.segmenter import Utterance
from edgescribe.daemon.pipeline import StreamPipeline
from edgescribe.daemon.streaming import StreamTranscriber
from edgescribe.engines.audio import load_audio
from edgescribe.engines.backend import load_model
from edgescribe.engines.decoding import decode
from edgescribe.engines.word_timing import Word
from tests.fixtures.scoring import corpus_counts, read_transcripts, wer
from tests.fixtures.models import base_package, tiny_en_package  # noqa: F401
from tests.fixtures.streaming import (  # noqa: F401
    THREADS,
    Collected,
    check_transcript_invariants,
    engines_for,
    segmenter_for,
    spoken_stream,
    write_wav,
)
from tests.fixtures.whisper_models import tiny_en_model  # noqa: F401


def drain(scheduler: InferenceScheduler) -> None:
    """Start the worker on what is queued, wait until all of it is decoded, stop."""
    scheduler.start()
    try:
        assert scheduler.wait_idle(120)
    finally:
        scheduler.stop()


def _request(lease, key, audio, final=True, done=None):
    return DecodeRequest(key=key, final=final, windows=[audio], lease=lease, on_done=done or (lambda outcome: None))


def test_partials_of_several_streams_ready_at_once_are_one_batch_and_finals_are_decoded_alone(corpus, tiny_en_model):
    references = read_transcripts(corpus / "en" / "transcripts.tsv")
    engines = engines_for(tiny_en_model)
    outcomes = Collected()
    scheduler = InferenceScheduler(max_batch=8)
    keys = ["jfk_inaugural_1961", "ls_1089-134691-0000", "arctic_axb_a0004"]
    for final in (False, True):  # queued before the worker starts: all six are ready at once
        for key in keys:
            audio = load_audio(corpus / "en" / f"{key}.wav")
            scheduler.submit(_request(engines.lease(), f"{key}:{final}", audio, final=final, done=outcomes))
    drain(scheduler)
    # finals alone: a batch's results depend on its other items (int8 activation scales)
    assert dict(scheduler.batch_sizes) == {1: 3, 3: 1}
    assert sorted(o.batch_size for o in outcomes.events) == [1, 1, 1, 3, 3, 3]
    assert all(o.batch_size == (1 if o.request.final else 3) for o in outcomes.events)
    texts = {o.request.key: o.results[0].text for o in outcomes.events}
    for key in keys:  # each stream gets its own transcript back, not a neighbour's
        for final in (False, True):
            assert wer(references[key], texts[f"{key}:{final}"]) < 0.2, (key, texts[f"{key}:{final}"])


def test_finals_go_first_and_a_newer_partial_replaces_a_queued_one(corpus, tiny_en_model):
    engines = engines_for(tiny_en_model)
    audio = load_audio(corpus / "en" / "ls_1089-134691-0000.wav")
    order = []

    def done(outcome):
        order.append((outcome.request.key, outcome.request.final, outcome.request.windows[0].size, outcome.batch_size))

    scheduler = InferenceScheduler(max_batch=2)
    lease = engines.lease()
    scheduler.submit(_request(lease, "a", audio[:16000], final=False, done=done))
    scheduler.submit(_request(lease, "b", audio[:16000], final=False, done=done))
    scheduler.submit(_request(lease, "a", audio[:24000], final=False, done=done))  # replaces a's first partial
    scheduler.submit(_request(lease, "c", audio, final=False, done=done))
    scheduler.submit(_request(lease, "c", audio, final=True, done=done))  # c's partial is now stale
    scheduler.submit(_request(lease, "d", audio, final=True, done=done))
    drain(scheduler)
    # the two finals share a take of the queue but are decoded one by one (see _decode_groups)
    assert order == [("c", True, audio.size, 1), ("d", True, audio.size, 1), ("b", False, 16000, 2), ("a", False, 24000, 2)]


def test_partials_get_at_most_their_share_of_the_worker_and_a_final_does_not_wait_for_it(corpus, tiny_en_model):
    engines = engines_for(tiny_en_model)
    audio = load_audio(corpus / "en" / "jfk_inaugural_1961.wav")[: 3 * 16000]
    scheduler = InferenceScheduler(max_batch=1, partial_share=0.3)
    talking = threading.Event()
    talking.set()

    def again(outcome):  # two talkers who never stop: a new partial as soon as the last is done
        if talking.is_set():
            scheduler.submit(_request(engines.lease(), outcome.request.key, audio, final=False, done=again))

    for key in ("a", "b"):
        scheduler.submit(_request(engines.lease(), key, audio, final=False, done=again))
    started = time.monotonic()
    scheduler.start()
    try:
        time.sleep(6.0)
        partial_busy, elapsed = scheduler.busy_seconds, time.monotonic() - started
        decode_s = partial_busy / scheduler.batches
        final_done = threading.Event()
        submitted = time.monotonic()
        scheduler.submit(_request(engines.lease(), "final", audio, done=lambda outcome: final_done.set()))
        assert final_done.wait(30)
        final_latency = time.monotonic() - submitted
        talking.clear()
    finally:
        scheduler.stop(timeout=30)
    # the budget is 0.3 of a 10-s window: at most 3 s (plus the decode that crossed it) in
    # these 6 s, where without it the partials would have kept the worker busy throughout
    assert partial_busy <= 0.3 * 10.0 + decode_s + 0.05, (partial_busy, elapsed)
    assert elapsed - partial_busy > 2.0
    # over budget, the worker idles instead of starting partials: the final starts at once
    assert final_latency < 2 * decode_s + 0.5, (final_latency, decode_s)


def test_a_final_waits_while_the_queue_of_finals_is_full(corpus, tiny_en_model):
    engines = engines_for(tiny_en_model)
    audio = load_audio(corpus / "en" / "ls_1089-134691-0000.wav")
    scheduler = InferenceScheduler(max_batch=1, max_pending_finals=2)
    lease = engines.lease()
    assert scheduler.submit(_request(lease, "a", audio))
    assert scheduler.submit(_request(lease, "b", audio))
    assert not scheduler.submit(_request(lease, "c", audio), timeout=0.2)  # back-pressure, not a drop
    assert scheduler.submit(_request(lease, "retry", audio), urgent=True)  # a fallback retry never waits
    scheduler.start()
    try:
        assert scheduler.submit(_request(lease, "c", audio), timeout=60)
        assert scheduler.wait_idle(120)
    finally:
        scheduler.stop()


def test_a_failing_decode_is_reported_to_the_request_and_the_worker_carries_on(corpus, tiny_en_model):
    engines = engines_for(tiny_en_model)
    audio = load_audio(corpus / "en" / "ls_1089-134691-0000.wav")
    calls = []

    def flaky(model, mel, options):
        calls.append(mel.shape[0])
        if len(calls) == 1:
            raise RuntimeError("engine fault")
        return decode(model, mel, options)

    outcomes = Collected()
    scheduler = InferenceScheduler(max_batch=1, decode=flaky)
    scheduler.submit(_request(engines.lease(), "a", audio, done=outcomes))
    scheduler.submit(_request(engines.lease(), "b", audio, done=outcomes))
    drain(scheduler)
    first, second = outcomes.events
    assert isinstance(first.error, RuntimeError) and first.results == []
    assert second.error is None and "longer" in second.results[0].text.lower()


# -- several microphones through one engine -------------------------------------------------


def test_several_streams_share_one_engine_and_each_gets_its_own_transcript(corpus, tmp_path, tiny_en_model):
    groups = {
        "line1": ("jfk_inaugural_1961", "arctic_axb_a0004"),
        "line2": ("ls_1089-134686-0000", "ls_3005-163389-0002"),
        "line3": ("lj_LJ001-0007", "ls_2033-164914-0002"),
    }
    calls = []

    def counting(model, mel, options):
        calls.append(mel.shape[0])
        return decode(model, mel, options)

    events = Collected()
    scheduler = InferenceScheduler(max_batch=4, decode=counting)
    scheduler.start()
    engines = engines_for(tiny_en_model)
    spoken, pipelines = {}, []
    for name, ids in groups.items():
        spoken[name] = spoken_stream(corpus, ids)
        wav = write_wav(tmp_path / f"{name}.wav", spoken[name].samples)
        capture = CaptureStream(StreamConfig(name=name, file=str(wav), speed=1000.0), CaptureOptions(buffer_s=600.0), events)
        transcriber = StreamTranscriber(name, TranscriptionConfig(partials=False), scheduler, engines, events)
        pipelines.append(StreamPipeline(capture, segmenter_for(name), transcriber))
    try:
        for pipeline in pipelines:
            pipeline.start()
        for pipeline in pipelines:
            assert pipeline.join(300)
        assert scheduler.wait_idle(300)
    finally:
        for pipeline in pipelines:
            pipeline.abort()
        scheduler.stop()
    assert max(calls) == 1, calls  # finals only (partials off): each decoded alone, whatever is queued
    assert sum(calls) >= sum(len(ids) for ids in groups.values())
    pairs = []
    for name in groups:
        check_transcript_invariants(events.transcripts(name))
        hypotheses = spoken[name].hypotheses(events.finals(name))
        assert set(hypotheses) == set(groups[name]), (name, hypotheses)  # its own files, all of them
        pairs += [(spoken[name].references[key], hypotheses[key]) for key in groups[name]]
    # the same six files through one stream give ~11 % (test_streaming); batching must not add errors
    assert corpus_counts(pairs).rate < 0.15, pairs


# -- switching models between utterances ----------------------------------------------------


def _utterance(stream, key, audio, ended, start=0.0):
    return Utterance(stream, key, start, 1_700_000_000.0 + start, audio, ended)


def test_serving_switches_from_tiny_to_base_between_utterances(corpus, tiny_en_package, base_package):  # noqa: F811
    from edgescribe.engines.backend import load_model

    base_dir = base_package.dir
    upgrade_may_finish = threading.Event()

    def load(path):
        model = load_model(path, backend="onnxruntime", threads=THREADS)
        if Path(path) == base_dir:
            upgrade_may_finish.wait(120)  # the switch happens while an utterance is open
        return model

    events = Collected()
    engines = EngineManager(load, tiny_en_package.dir, base_dir, emit=events)
    scheduler = InferenceScheduler(max_batch=4)
    scheduler.start()
    try:
        engines.start()
        transcriber = StreamTranscriber("mic", TranscriptionConfig(), scheduler, engines, events)
        first = load_audio(corpus / "en" / "ls_1089-134686-0002.wav")
        transcriber.push(_utterance("mic", "u1", first[:32000], ended=False))  # u1 opens on tiny.en
        upgrade_may_finish.set()
        assert engines.switched.wait(120)
        assert [m.name for m in engines.loaded_models()] == ["base", "tiny.en"]  # both held during the switch
        transcriber.push(_utterance("mic", "u1", first, ended=True))
        second = load_audio(corpus / "en" / "ls_1089-134691-0000.wav")
        transcriber.push(_utterance("mic", "u2", second, ended=True, start=10.0))
        assert scheduler.wait_idle(120)
    finally:
        scheduler.stop()
        engines.stop()
    model_events = events.of_type(ModelEvent)
    assert [(e.action, e.model) for e in model_events] == [("loaded", "tiny.en"), ("switched", "base")]
    finals = {e.utterance_id: e for e in events.finals()}
    assert finals["u1"].model == "tiny.en"  # the open utterance finished on the model it started on
    assert finals["u2"].model == "base"
    assert "lamps" in finals["u1"].text.lower() and "longer" in finals["u2"].text.lower()
    assert [m.name for m in engines.loaded_models()] == ["base"]  # tiny.en released after u1


def test_an_upgrade_that_fails_to_load_keeps_the_serving_model(tmp_path, tiny_en_model, caplog):
    events = Collected()
    broken = tmp_path / "base"
    broken.mkdir()

    def load(path):
        if Path(path) == broken:
            from edgescribe.engines.backend import load_model

            return load_model(path)  # raises ModelPackageError: no manifest
        return tiny_en_model

    engines = EngineManager(load, tiny_en_model.package.dir, broken, emit=events)
    engines.start()
    assert engines.switched.wait(60)
    engines.stop()
    assert engines.current is tiny_en_model
    assert [e.action for e in events.of_type(ModelEvent)] == ["loaded"]
    assert "failed to load" in caplog.text and str(broken) in caplog.text


def test_the_daemon_configuration_names_the_packages_and_how_they_run(tiny_en_package):  # noqa: F811
    from edgescribe.daemon.config.engine import EngineConfig
    from edgescribe.daemon.config.models import ModelsConfig

    events = Collected()
    engines = EngineManager.from_config(
        ModelsConfig(serving=tiny_en_package.dir), EngineConfig(backend="onnxruntime", threads=THREADS), events
    )
    engines.start()
    engines.stop()
    assert engines.current.name == "tiny.en" and engines.current.runner.name == "onnxruntime"
    assert engines.switched.is_set()  # no upgrade configured: nothing to wait for
    assert [(e.action, e.model, e.backend) for e in events.of_type(ModelEvent)] == [("loaded", "tiny.en", "onnxruntime")]


# -- word timestamps -------------------------------------------------------------------------


def test_a_final_with_word_timestamps_has_the_same_text_and_each_window_its_timed_words(corpus, tiny_en_model):
    engines = engines_for(tiny_en_model)
    audio = load_audio(corpus / "en" / "jfk_inaugural_1961.wav")
    halves = [np.ascontiguousarray(part) for part in np.array_split(audio, 2)]  # a final of two windows
    outcomes = Collected()
    scheduler = InferenceScheduler(max_batch=4)
    for timed in (False, True):
        scheduler.submit(DecodeRequest(key=f"jfk:{timed}", final=True, windows=halves, lease=engines.lease(),
                                       on_done=outcomes, word_timestamps=timed))
    drain(scheduler)
    plain, timed = outcomes.events
    assert plain.error is None and timed.error is None
    assert plain.words == []  # not asked for: nothing timed
    # timing the words never changes what was decoded
    assert [r.text for r in timed.results] == [r.text for r in plain.results]
    assert len(timed.words) == 2
    for half, result, words in zip(halves, timed.results, timed.words):
        assert words, result.text
        assert "".join(w.word for w in words).split() == result.text.split()
        starts = [w.start for w in words]
        assert starts == sorted(starts)
        assert all(0.0 <= w.start <= w.end <= len(half) / 16000 + 0.02 for w in words), words
        assert all(w.probability is not None and 0.0 < w.probability <= 1.0 for w in words)
    # JFK's first half opens at about 0.3 s with "And so, my fellow Americans" (the recording's own timing)
    assert 0.0 <= timed.words[0][0].start <= 1.0, timed.words[0]


def test_a_package_without_word_timing_gives_finals_their_text_and_one_warning(corpus, tmp_path, tiny_en_package,
                                                                              caplog):
    # the same package, exported as before word timing: no aligner graph in its manifest
    package = tmp_path / "tiny.en-no-aligner"
    package.mkdir()
    manifest = json.loads((tiny_en_package.dir / "manifest.json").read_text())
    manifest["files"].pop("aligner.onnx")
    manifest["precision"].pop("aligner.onnx", None)
    for name in manifest["files"]:
        (package / name).symlink_to(tiny_en_package.dir / name)
    (package / "manifest.json").write_text(json.dumps(manifest))
    engines = engines_for(load_model(package, backend="onnxruntime", threads=THREADS))
    audio = load_audio(corpus / "en" / "ls_1089-134691-0000.wav")
    outcomes = Collected()
    scheduler = InferenceScheduler(max_batch=1)
    for key in ("a", "b"):
        scheduler.submit(DecodeRequest(key=key, final=True, windows=[audio], lease=engines.lease(), on_done=outcomes,
                                       word_timestamps=True))
    with caplog.at_level("WARNING", logger="edgescribe.daemon.scheduler"):
        scheduler.start()
        try:
            assert scheduler.wait_idle(120)
        finally:
            scheduler.stop()
    for outcome in outcomes.events:
        assert outcome.error is None and "longer" in outcome.results[0].text.lower()
        assert outcome.words == [None]  # untimed, not empty: the final goes out without a words array
    warnings = [r.getMessage() for r in caplog.records if "word_timestamps" in r.getMessage()]
    assert len(warnings) == 1 and "aligner.onnx" in warnings[0], warnings


def test_words_after_a_context_start_after_its_text_and_its_audio():
    words = [Word(" And", 0.1, 0.3, 0.9), Word(" so,", 0.3, 0.5, 0.9), Word(" ask", 2.25, 2.5, 0.8), Word(" not.", 2.5, 3.0, 0.7)]
    assert _after_context(words, " And so,", 2.0) == [Word(" ask", 0.25, 0.5, 0.8), Word(" not.", 0.5, 1.0, 0.7)]
    assert _after_context(words, " And so, ask not.", 2.0) == []
    # a continuation glued to the prefix's last word cannot be split: untimed, not mistimed
    assert _after_context(words, " And s", 2.0) is None and _after_context(None, " And so,", 2.0) is None
