"""Word timings (engines/word_timing.py, the aligner graph of engines/alignment_export.py, and
``edgescribe transcribe --word-timestamps``), on real tiny.en weights and corpus recordings,
against faster-whisper's word_timestamps=True on the same weights as the reference."""

from __future__ import annotations

import argparse
import json
import logging
import shutil

import numpy as np
import pytest

from edgescribe.engines import transcribe_command
from edgescribe.engines.alignment_export import aligner_inputs, build_aligner
from edgescribe.engines.audio import load_audio
from edgescribe.engines.backend import create_runner
from edgescribe.engines.errors import ModelPackageError
from edgescribe.engines.model import WhisperModel
from edgescribe.engines.onnx_runner import OnnxRunner
from edgescribe.engines.package import ALIGNER, MANIFEST, ModelPackage
from edgescribe.engines.sources import load_weights
from edgescribe.engines.tensorrt.build import build_engines
from edgescribe.engines.tensorrt.builder import BuildOptions
from edgescribe.engines.tensorrt.runner import TensorRTRunner
from edgescribe.engines.transcribe import TranscribeOptions, transcribe
from edgescribe.engines.word_timing import (
    AlignedWord,
    alignment_matrix,
    dtw,
    median_filter,
    merge_punctuations,
    split_to_word_tokens,
)
from tests.fixtures.fake_tensorrt import FakeTensorRT
from tests.fixtures.faster_whisper_reference import load_reference
from tests.fixtures.model_package import onnx_sessions, tiny_package  # noqa: F401  (fixtures)
from tests.fixtures.models import tiny_en_package  # noqa: F401  (fixtures)
from tests.fixtures.whisper_models import tiny_en_model  # noqa: F401  (fixtures)

RECORDING = "arctic_axb_a0004.wav"  # "Lord, but I'm glad to see you again, sir."


def _dtw_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """openai-whisper's dtw_cpu and backtrace, cell by cell."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf)
    trace = -np.ones((n + 1, m + 1))
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
    i, j = n, m
    trace[0, :], trace[:, 0] = 2, 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        i, j = {0: (i - 1, j - 1), 1: (i - 1, j), 2: (i, j - 1)}[int(trace[i, j])]
    return tuple(np.array(path[::-1]).T)


@pytest.fixture(scope="module")
def window(tiny_en_model, corpus):
    """A real window: its encoder output, decoded text tokens and the aligner's scores over them."""
    model = tiny_en_model
    result = transcribe(model, corpus / "en" / RECORDING, TranscribeOptions(without_timestamps=True, encoder_window="full"))
    text_tokens = [t for t in result.segments[0].tokens if t < model.tokenizer.special.eot]
    samples = load_audio(corpus / "en" / RECORDING)
    mel = model.log_mel(samples)
    frames = mel.shape[-1] - 1
    cross = model.runner.encode(model.encoder_window(mel[:, :frames], "full")[None])
    special = model.tokenizer.special
    tokens = [special.sot, special.no_timestamps, *text_tokens, special.eot]
    scores = model.runner.align(np.array([tokens]), cross)[:, 0]
    return {"text_tokens": text_tokens, "frames": frames, "cross": cross, "scores": scores,
            "tokens": tokens, "samples": samples}


def test_the_aligner_gives_one_score_row_per_token_and_head(tiny_en_model, window):
    heads = tiny_en_model.package.manifest.alignment_heads
    assert heads == [(1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)]  # tiny.en's config.json
    assert window["scores"].shape == (len(heads), len(window["tokens"]), tiny_en_model.dims.n_audio_ctx)
    # the graph takes shorter windows too (dynamic audio length); the scores differ, as the encoder
    # sees a different window, but the words land in the same places (within a timestamp step)
    short = tiny_en_model.runner.encode(tiny_en_model.encoder_window(
        tiny_en_model.log_mel(window["samples"])[:, : window["frames"]], "adaptive")[None])
    short_scores = tiny_en_model.runner.align(np.array([window["tokens"]]), short)[:, 0]
    assert short_scores.shape[:2] == window["scores"].shape[:2] and short_scores.shape[2] < 1500
    assert np.isfinite(short_scores).all()
    frames = window["frames"]
    long_path = dtw(-alignment_matrix(window["scores"], frames)[1:-1])
    short_path = dtw(-alignment_matrix(short_scores, frames)[1:-1])
    starts = [np.flatnonzero(path[0] == row)[0] for path in (long_path, short_path) for row in range(len(window["tokens"]) - 2)]
    half = len(starts) // 2
    long_start, short_start = np.array([long_path[1][i] for i in starts[:half]]), np.array([short_path[1][i] for i in starts[half:]])
    assert np.abs(long_start - short_start).mean() <= 2  # encoder positions, 20 ms each


def test_dtw_follows_openai_whispers_recurrence_on_a_real_matrix(window):
    matrix = alignment_matrix(window["scores"], window["frames"])[1:-1]
    assert matrix.shape == (len(window["text_tokens"]) + 1, window["frames"] // 2)
    ours = dtw(-matrix)
    reference = _dtw_reference(-matrix)
    np.testing.assert_array_equal(ours[0], reference[0])
    np.testing.assert_array_equal(ours[1], reference[1])
    # monotonic, from the first cell to the last
    assert (np.diff(ours[0]) >= 0).all() and (np.diff(ours[1]) >= 0).all()
    assert (ours[0][0], ours[1][0]) == (0, 0) and (ours[0][-1], ours[1][-1]) == (matrix.shape[0] - 1, matrix.shape[1] - 1)


def test_dtw_on_a_hand_made_staircase():
    # token 0 is cheap over frames 0-1, token 1 over 2-3, token 2 over 4-5
    cost = np.ones((3, 6))
    cost[0, :2] = cost[1, 2:4] = cost[2, 4:] = 0.0
    tokens, frames = dtw(cost)
    assert tokens.tolist() == [0, 0, 1, 1, 2, 2] and frames.tolist() == [0, 1, 2, 3, 4, 5]


def test_median_filter_is_a_reflect_padded_running_median(window):
    x = window["scores"][:2, :5, :40].astype(np.float64)
    filtered = median_filter(x, 7)
    padded = np.pad(x, [(0, 0), (0, 0), (3, 3)], mode="reflect")
    expected = np.stack([np.median(padded[..., k : k + 7], axis=-1) for k in range(x.shape[-1])], axis=-1)
    np.testing.assert_allclose(filtered, expected)


def test_words_split_at_spaces_and_punctuation_merges(tiny_en_model, window):
    model = tiny_en_model
    words, pieces = split_to_word_tokens(model, window["text_tokens"] + [model.tokenizer.special.eot], "en")
    assert "".join(words).strip() == "Lord, but I'm glad to see you again, sir."
    assert words[:4] == [" Lord", ",", " but", " I'm"]  # "I'm" is several tokens, one word
    assert sum(len(p) for p in pieces) == len(window["text_tokens"]) + 1
    timings = [AlignedWord(w, p, 0.0, 0.0, None) for w, p in zip(words, pieces)]
    merge_punctuations(timings)
    assert [t.word for t in timings if t.word][:2] == [" Lord,", " but"]
    quoted = [AlignedWord(w, [i], 0.0, 0.0, None) for i, w in enumerate([" \"", "Hi", "!", " you", " (", "sic", ")"])]
    merge_punctuations(quoted)
    assert [t.word for t in quoted] == ["", " \"Hi!", "", " you", "", " (sic)", ""]
    assert [t.tokens for t in quoted if t.word] == [[0, 1, 2], [3], [4, 5, 6]]


def test_word_times_are_ordered_inside_segments_and_close_to_faster_whisper(tiny_en_model, corpus):
    path = corpus / "en" / "lj_LJ001-0005.wav"
    # full windows, as faster-whisper reads them
    result = transcribe(tiny_en_model, path, TranscribeOptions(word_timestamps=True, encoder_window="full"))
    plain = transcribe(tiny_en_model, path, TranscribeOptions(encoder_window="full"))
    assert [s.text for s in result.segments] == [s.text for s in plain.segments]  # the same segments
    # ... whose times follow their words, so the second starts where "as" does, before its timestamp token
    assert result.segments[1].start < plain.segments[1].start
    ours = []
    for segment in result.segments:
        assert segment.words and "".join(w.word for w in segment.words) == segment.text
        for word in segment.words:
            assert segment.start <= word.start <= word.end <= segment.end
            assert 0 < word.probability <= 1
        starts = [w.start for w in segment.words]
        assert starts == sorted(starts)
        ours.extend(segment.words)

    reference = load_reference("tiny.en", compute_type="float32")
    segments, _ = reference.transcribe(str(path), beam_size=1, best_of=5, vad_filter=False, word_timestamps=True)
    theirs = [w for s in segments for w in s.words]
    assert [w.word for w in ours] == [w.word for w in theirs]
    start = np.abs([a.start - b.start for a, b in zip(ours, theirs)])
    end = np.abs([a.end - b.end for a, b in zip(ours, theirs)])
    assert start.mean() <= 0.05 and end.mean() <= 0.05 and max(start.max(), end.max()) <= 0.3
    probability = np.abs([a.probability - b.probability for a, b in zip(ours, theirs)])
    assert probability.mean() < 0.1  # decoder's choices vs CTranslate2's forced-alignment pass


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    transcribe_command.add_arguments(parser)
    return transcribe_command.run(parser.parse_args(argv))


def test_command_json_srt_and_vtt_carry_words(tiny_en_package, corpus, capsys):
    path = str(corpus / "en" / RECORDING)
    # the full window reads "I'm", one word of several tokens (a short one reads "I am")
    base = ["--model", str(tiny_en_package.dir), "--threads", "2", "--word-timestamps", "--encoder-window", "full"]
    assert _run([*base, "--format", "json", path]) == 0
    segment = json.loads(capsys.readouterr().out)["segments"][0]
    assert [w["word"] for w in segment["words"]][:3] == ["Lord,", "but", "I'm"]
    assert set(segment["words"][0]) == {"word", "start", "end", "probability"}
    assert _run([*base, "--format", "srt", path]) == 0
    srt = capsys.readouterr().out
    assert srt.startswith("1\n00:00:00,") and "\n\n2\n" in srt and srt.split("\n")[2] == "Lord,"
    assert _run([*base, "--format", "vtt", path, str(corpus / "en" / "arctic_aew_a0001.wav")]) == 0
    vtt = capsys.readouterr().out
    assert vtt.startswith(f"WEBVTT\n\nNOTE {path}\n\n00:00:00.000 --> 00:00:00.") and vtt.count("WEBVTT") == 1
    assert vtt.count("\nNOTE ") == 2 and "\nLord,\n" in vtt and "\nAuthor\n" in vtt
    assert ",0" not in vtt.replace("Lord,", "").replace("again,", "")  # VTT times use a dot


def test_a_package_without_an_aligner_says_so_in_one_line(tiny_en_package, corpus, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_en_package.dir, old, ignore=shutil.ignore_patterns("*.int8.onnx", ALIGNER))
    manifest = json.loads((old / MANIFEST).read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if k != ALIGNER and "int8" not in k}
    (old / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError, match=r"has no word timing \(aligner.onnx\): it predates word timing; re-run"):
        ModelPackage.load(old, verify=False).aligner_path()
    with pytest.raises(ModelPackageError, match="has no word timing"):
        _run(["--model", str(old), "--word-timestamps", str(corpus / "en" / RECORDING)])
    assert _run(["--model", str(old), str(corpus / "en" / RECORDING)]) == 0  # without word timing it still works
    manifest["alignment_heads"] = []  # weights that name none (a Hugging Face checkpoint without them)
    (old / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError, match=r"has no word timing \(aligner.onnx\): its weights name no alignment heads$"):
        ModelPackage.load(old, verify=False).aligner_path()


@pytest.fixture(scope="module")
def tensorrt_engines(tiny_package, onnx_sessions, tmp_path_factory):  # noqa: F811
    """Validated engines, the aligner's among them, built through the GPU double."""
    fake = FakeTensorRT(sessions=onnx_sessions)
    engine_dir = tmp_path_factory.mktemp("engines")
    build_engines(tiny_package, engine_dir, BuildOptions(max_batch=2, max_prompt_tokens=32), fake, threads=1)
    return engine_dir, fake


def _words(model, path) -> list:
    result = transcribe(model, path, TranscribeOptions(word_timestamps=True, encoder_window="adaptive"))
    return [(w.word, w.start, w.end, w.probability) for s in result.segments for w in s.words]


def test_the_tensorrt_runner_times_words_on_its_aligner_engine_like_onnx_runtime(tiny_package, tensorrt_engines,  # noqa: F811
                                                                                 corpus):
    """The aligner engine reads the (fp16) cross K/V where the encoder engine left them, and the
    words it times are ONNX Runtime's, through the GPU double (real graphs, fake device)."""
    engine_dir, fake = tensorrt_engines
    runner = create_runner(tiny_package, "tensorrt", engine_dir=engine_dir, load_tensorrt=lambda: fake)
    assert isinstance(runner, TensorRTRunner) and runner.aligns_on_gpu and runner.host_aligner is None
    reference = OnnxRunner(tiny_package, threads=1, prefer_int8=False)
    path = corpus / "en" / "lj_LJ001-0005.wav"  # two segments, in a window shorter than 30 s
    ours, theirs = _words(WhisperModel.from_package(tiny_package, runner), path), _words(
        WhisperModel.from_package(tiny_package, reference), path)
    assert len(ours) >= 10 and [w[0] for w in ours] == [w[0] for w in theirs]
    assert [w[1:3] for w in ours] == [w[1:3] for w in theirs]  # the same times, to the millisecond
    np.testing.assert_allclose([w[3] for w in ours], [w[3] for w in theirs], atol=1e-3)  # fp16 K/V: measured 1e-4

    # bound in place: layer l, row b of the encoder's [layers, batch, rows, state] buffers
    model = WhisperModel.from_package(tiny_package, runner)
    mel = np.repeat(model.encoder_window(model.log_mel(load_audio(corpus / "en" / RECORDING)), "adaptive")[None], 2, axis=0)
    cross = runner.encode(mel)
    special = model.tokenizer.special
    tokens = np.array([[special.sot, special.no_timestamps, *model.tokenizer.encode(" Lord, but"), special.eot]] * 2)
    scores = runner.align(tokens, cross)
    aligner = [c for c in fake.gpu.contexts if "alignment" in c.engine.dtypes][-1]  # this runner's aligner
    row = cross.rows * 384 * np.dtype(runner.kv_dtype).itemsize
    assert aligner.addresses["cross_k.3"] == cross.k.ptr + (3 * 2 + 1) * row  # the last row ran last
    assert aligner.shapes["cross_v.2"] == (1, 6, cross.rows, 64)
    expected = reference.align(tokens, reference.encode(mel))
    assert scores.shape == expected.shape == (8, 2, 6, cross.rows)
    assert np.abs(scores - expected).max() < 2e-3 * np.abs(expected).max()  # fp16 K/V: measured 3e-4


def test_engines_built_before_the_aligner_engine_align_on_the_host_and_say_so(tiny_package, tensorrt_engines,  # noqa: F811
                                                                              tmp_path, corpus, caplog):
    engine_dir, fake = tensorrt_engines
    old = tmp_path / "tiny.en"
    shutil.copytree(engine_dir / "tiny.en", old)
    for leftover in ("aligner.engine", "aligner.engine.json"):
        (old / leftover).unlink()
    mark = json.loads((old / "validated.json").read_text())
    del mark["engines"]["aligner"]
    (old / "validated.json").write_text(json.dumps(mark))
    caplog.set_level(logging.INFO, logger="edgescribe.engines.backend")
    runner = create_runner(tiny_package, "tensorrt", engine_dir=tmp_path, load_tensorrt=lambda: fake)
    assert not runner.aligns_on_gpu and runner.host_aligner is not None
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("word timing:")]
    assert line == (f"word timing: no aligner engine (no aligner engine at {old / 'aligner.engine'}), so words are "
                    "aligned by ONNX Runtime over a host copy of the cross K/V; to align on the GPU, build them with: "
                    f"edgescribe build-engines --model {tiny_package.dir} --out {tmp_path}")
    reference = OnnxRunner(tiny_package, threads=1, prefer_int8=False)
    model = WhisperModel.from_package(tiny_package, reference)
    mel = model.encoder_window(model.log_mel(load_audio(corpus / "en" / RECORDING)), "full")[None]
    special = model.tokenizer.special
    tokens = np.array([[special.sot, special.no_timestamps, *model.tokenizer.encode(" Lord, but"), special.eot]])
    ours, theirs = runner.align(tokens, runner.encode(mel)), reference.align(tokens, reference.encode(mel))
    assert np.abs(ours - theirs).max() < 2e-3 * np.abs(theirs).max()


def test_the_aligner_keeps_the_manifests_head_order_and_refuses_heads_the_model_lacks(tiny_en_model, window):
    import onnxruntime as ort

    weights = load_weights("tiny.en")
    heads = [(3, 1), (1, 0), (2, 5)]  # not in layer order
    session = ort.InferenceSession(build_aligner(weights, heads).SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()][1:] == aligner_inputs(heads) == [
        "cross_k.0", "cross_k.1", "cross_k.2", "cross_k.3", "cross_v.0", "cross_v.1", "cross_v.2"]
    cross = window["cross"]
    feeds = {"tokens": np.array([window["tokens"]])}
    feeds |= {name: (cross.k if name.startswith("cross_k") else cross.v)[int(name[-1])] for name in aligner_inputs(heads)}
    scores = session.run(["alignment"], feeds)[0][:, 0]
    package_heads = tiny_en_model.package.manifest.alignment_heads  # the package's aligner, heads in its order
    for row, head in enumerate(heads):
        np.testing.assert_allclose(scores[row], window["scores"][package_heads.index(head)], atol=1e-4)
    with pytest.raises(ValueError, match=r"alignment head \(4, 0\) is outside the decoder's 4 layers x 6 heads"):
        build_aligner(weights, [(4, 0)])
