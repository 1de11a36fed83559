"""Does a candidate Runner compute what the float32 ONNX Runtime reference computes?

Run before an engine is marked good: one real recording goes through both runners and the
outputs are compared with the tolerances below. Everything here is numpy over the
:class:`engines.runtime.Runner` protocol, so the same code compares ONNX Runtime float32
with ONNX Runtime int8 in the tests and TensorRT with ONNX Runtime on a Jetson.

The decoder is compared teacher-forced: both runners are fed the reference's own greedy
tokens, so one early disagreement cannot snowball into a different sentence and hide how
large the numerical drift really is. The end-to-end check is separate: the recording must
be transcribed to the same text by both. With an aligner (word timing), its scores over the
prompt and the forced tokens are compared too, and so is where each token starts after the
same dynamic time warping word timing does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from edgescribe.engines.audio import N_FRAMES, load_audio, log_mel, pad_or_trim
from edgescribe.engines.word_timing import alignment_matrix, dtw

log = logging.getLogger(__name__)

REFERENCE_WAV = Path(__file__).resolve().parent.parent / "data" / "reference_lj001-0002.wav"


@dataclass(frozen=True)
class Tolerance:
    """Limits a candidate must stay within.

    ``cross_rel``: max |candidate - reference| over cross K (and V), divided by max |reference|
    (the scale of the tensor), so one limit fits every layer and model size.
    ``logits_abs``: max |candidate - reference| over the logits of every forced step.
    ``top1``: fraction of forced steps whose argmax token agrees.
    ``alignment_rel``: as ``cross_rel``, over the aligner's scores.
    ``start_shift``: most encoder positions (20 ms each) a token's aligned start may move.
    """

    cross_rel: float
    logits_abs: float
    top1: float
    alignment_rel: float = 0.0
    start_shift: int = 0


# fp32 engines differ from ONNX Runtime only in summation order (and TF32 where TensorRT uses it).
# fp16 has a 2^-11 unit roundoff; over 4-6 layers of 384-512-wide dot products that is ~1% of a
# tensor's scale, and logits (range ~ -10..+30) move by a few tenths -- not enough to change
# which token wins except on near-ties, hence top-1 agreement of 95% rather than 100%.
# The aligner's scores are one to four decoder layers from the cross K/V: the cross K/V's limit
# doubled. Word timing only needs where each token starts; one 20-ms step of drift is allowed.
TOLERANCES = {
    "fp32": Tolerance(cross_rel=2e-3, logits_abs=0.1, top1=1.0, alignment_rel=4e-3, start_shift=1),
    "fp16": Tolerance(cross_rel=2e-2, logits_abs=1.0, top1=0.95, alignment_rel=4e-2, start_shift=1),
}


@dataclass(frozen=True)
class Capture:
    """What one runner produced for the reference recording."""

    cross_k: np.ndarray  # float32 [layers, batch, audio_ctx, state]
    cross_v: np.ndarray
    logits: np.ndarray  # float32 [steps, batch, vocab]; step 0 is the prompt
    alignment: Optional[np.ndarray] = None  # float32 [heads, batch, prompt + forced, rows]: the aligner's scores


@dataclass(frozen=True)
class Check:
    name: str
    graph: str  # "encoder", "decoder" or "aligner": which engine to blame
    value: float
    limit: float
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{self.name}: {self.detail} -> {'ok' if self.passed else 'FAIL'}"


@dataclass(frozen=True)
class ValidationReport:
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def lines(self) -> list[str]:
        return [check.line() for check in self.checks]

    @property
    def blamed(self) -> frozenset[str]:
        """The engine to fix first. Decoder and aligner outputs are computed from the candidate's
        own cross K/V, so when the encoder is off their drift says nothing about them."""
        failed = {check.graph for check in self.checks if not check.passed}
        return frozenset({"encoder"}) if "encoder" in failed else frozenset(failed)

    def check(self, name: str) -> Check:
        return next(check for check in self.checks if check.name == name)


# -- pure comparisons --------------------------------------------------------------------


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(max abs difference, that divided by max |reference|)."""
    reference = np.asarray(reference, dtype=np.float32)
    candidate = np.asarray(candidate, dtype=np.float32)
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: reference {list(reference.shape)}, candidate {list(candidate.shape)}")
    if not np.all(np.isfinite(candidate)):
        return float("inf"), float("inf")
    max_abs = float(np.max(np.abs(reference - candidate)))
    scale = float(np.max(np.abs(reference)))
    return max_abs, max_abs / scale if scale > 0 else max_abs


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of (step, row) positions where both pick the same token."""
    return float(np.mean(np.argmax(reference, axis=-1) == np.argmax(candidate, axis=-1)))


def compare(
    reference: Capture,
    candidate: Capture,
    tolerance: Tolerance,
    texts: Optional[tuple[str, str]] = None,
) -> ValidationReport:
    """Judge ``candidate`` against ``reference``. A candidate batch larger than the reference's
    is compared row by row against reference row 0 (the same recording repeated)."""
    rows = candidate.cross_k.shape[1]

    def tiled(array: np.ndarray, axis: int) -> np.ndarray:
        if array.shape[axis] == rows:
            return array
        return np.repeat(np.take(array, [0], axis=axis), rows, axis=axis)

    checks = []
    for name, ref, cand in (
        ("cross_k", reference.cross_k, candidate.cross_k),
        ("cross_v", reference.cross_v, candidate.cross_v),
    ):
        max_abs, rel = relative_error(tiled(ref, 1), cand)
        checks.append(Check(
            name, "encoder", rel, tolerance.cross_rel, rel <= tolerance.cross_rel,
            f"max abs {max_abs:.3g}, relative {rel:.3g} (limit {tolerance.cross_rel:g})",
        ))

    ref_logits = tiled(reference.logits, 1)
    max_abs, _ = relative_error(ref_logits, candidate.logits)
    checks.append(Check(
        "logits", "decoder", max_abs, tolerance.logits_abs, max_abs <= tolerance.logits_abs,
        f"max abs {max_abs:.3g} over {candidate.logits.shape[0]} steps x {rows} rows (limit {tolerance.logits_abs:g})",
    ))
    agreement = top1_agreement(ref_logits, candidate.logits)
    checks.append(Check(
        "top1", "decoder", agreement, tolerance.top1, agreement >= tolerance.top1,
        f"argmax agrees on {agreement:.1%} of steps (need {tolerance.top1:.0%})",
    ))
    if reference.alignment is not None and candidate.alignment is not None:
        checks += _alignment_checks(tiled(reference.alignment, 1), candidate.alignment, tolerance)
    if texts is not None:
        ref_text, cand_text = (text.strip() for text in texts)
        same = ref_text == cand_text
        checks.append(Check(
            "text", "decoder", float(same), 1.0, same,
            f"{cand_text!r}" + ("" if same else f" != reference {ref_text!r}"),
        ))
    return ValidationReport(tuple(checks))


def token_starts(scores: np.ndarray) -> np.ndarray:
    """The encoder position where each token starts on word timing's warping path, from one
    row's scores [heads, tokens, rows] over the whole window."""
    tokens, positions = dtw(-alignment_matrix(scores, 2 * scores.shape[-1]))
    return positions[np.searchsorted(tokens, np.arange(scores.shape[1]))]


def _alignment_checks(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance) -> list[Check]:
    max_abs, rel = relative_error(reference, candidate)
    checks = [Check(
        "alignment", "aligner", rel, tolerance.alignment_rel, rel <= tolerance.alignment_rel,
        f"max abs {max_abs:.3g}, relative {rel:.3g} (limit {tolerance.alignment_rel:g})",
    )]
    if np.isfinite(rel):
        shift = max(int(np.abs(token_starts(reference[:, row]) - token_starts(candidate[:, row])).max())
                    for row in range(candidate.shape[1]))
    else:
        shift = np.iinfo(np.int32).max
    checks.append(Check(
        "token starts", "aligner", float(shift), float(tolerance.start_shift), shift <= tolerance.start_shift,
        f"move by at most {shift} positions of 20 ms (limit {tolerance.start_shift})",
    ))
    return checks


# -- driving two runners -----------------------------------------------------------------


def host_cross(runner, cross) -> tuple[np.ndarray, np.ndarray]:
    """Cross K/V as host float32 arrays: TensorRT copies them off the device, ONNX Runtime's are numpy."""
    if hasattr(runner, "cross_to_host"):
        k, v = runner.cross_to_host(cross)
    else:
        k, v = cross.k, cross.v
    return np.asarray(k, dtype=np.float32), np.asarray(v, dtype=np.float32)


def greedy_tokens(runner, mel: np.ndarray, prompt: Sequence[int], eot: int, max_steps: int) -> list[int]:
    """The reference's own greedy continuation of ``prompt`` (plain argmax, up to EOT)."""
    cross = runner.encode(mel[:1])
    cache = runner.new_cache(1)
    logits = runner.decode(np.asarray([prompt], dtype=np.int64), np.zeros(1, dtype=np.int64), cache, cross)
    tokens: list[int] = []
    while len(tokens) < max_steps:
        token = int(np.argmax(logits[0]))
        tokens.append(token)
        if token == eot:
            break
        offset = np.asarray([len(prompt) + len(tokens) - 1], dtype=np.int64)
        logits = runner.decode(np.asarray([[token]], dtype=np.int64), offset, cache, cross)
    return tokens


def capture(runner, mel: np.ndarray, prompt: Sequence[int], forced: Sequence[int], batch: int = 1,
            align: bool = False) -> Capture:
    """Encode ``mel`` (row 0 repeated ``batch`` times), feed the prompt, then ``forced`` one by one;
    with ``align``, run the aligner over the prompt and ``forced`` as word timing would."""
    mel = np.repeat(mel[:1], batch, axis=0)
    cross = runner.encode(mel)
    cross_k, cross_v = host_cross(runner, cross)
    cache = runner.new_cache(batch)
    steps = [runner.decode(np.tile(np.asarray(prompt, dtype=np.int64), (batch, 1)), np.zeros(batch, dtype=np.int64), cache, cross)]
    # The last forced token needs no step after it: its logits would predict past the end.
    for index, token in enumerate(forced[:-1]):
        offsets = np.full(batch, len(prompt) + index, dtype=np.int64)
        steps.append(runner.decode(np.full((batch, 1), token, dtype=np.int64), offsets, cache, cross))
    alignment = None
    if align:
        sequence = np.tile(np.asarray([*prompt, *forced], dtype=np.int64), (batch, 1))
        alignment = np.asarray(runner.align(sequence, cross), dtype=np.float32)
    return Capture(cross_k, cross_v, np.stack([np.asarray(s, dtype=np.float32) for s in steps]), alignment)


def validate(
    reference,
    candidate,
    mel: np.ndarray,
    prompt: Sequence[int],
    eot: int,
    tolerance: Tolerance,
    transcribe: Optional[Callable[[object], str]] = None,
    batch: int = 1,
    max_steps: int = 32,
    align: bool = False,
) -> ValidationReport:
    """Compare ``candidate`` with ``reference`` on ``mel`` [1, n_mels, 3000].

    ``batch`` > 1 runs the candidate on that many copies, so row indexing and per-row cache
    writes are exercised too. ``transcribe(runner) -> text`` adds the end-to-end text check;
    ``align`` the aligner's checks.
    """
    forced = greedy_tokens(reference, mel, prompt, eot, max_steps)
    expected = capture(reference, mel, prompt, forced, batch=1, align=align)
    actual = capture(candidate, mel, prompt, forced, batch=batch, align=align)
    texts = (transcribe(reference), transcribe(candidate)) if transcribe else None
    return compare(expected, actual, tolerance, texts)


def reference_mel(mel_filters: np.ndarray, wav: Path = REFERENCE_WAV, frames: int = N_FRAMES) -> np.ndarray:
    """The reference recording as one log-mel window of ``frames`` (30 s unless shorter),
    float32 [1, n_mels, frames]."""
    return pad_or_trim(log_mel(load_audio(wav), mel_filters), frames)[None].astype(np.float32)
