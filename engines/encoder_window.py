"""How much audio the encoder reads for one short-form window.

Whisper was trained on 30-s windows, so every utterance is padded to 30 s and a 4-s final pays
for 26 s of padding. The encoder graph takes any even mel length up to 3000 frames and slices
its positional embedding to match (engines/onnx_export.py), so a short utterance can be encoded
in a shorter window. Too short a window makes the decoder lose the end of the audio and repeat
itself, so the window is never shorter than a floor and always leaves a margin of padding after
the speech.

``adaptive`` rounds the need (content + margin, at least the floor) up to one of a few fixed
window lengths rather than to the exact length: TensorRT then builds one optimisation profile
per length, the scheduler can batch windows of one length together, and ONNX Runtime's
shape-specialised kernels stay warm. The lengths and the margin were chosen by measuring corpus
WER and the gates' rejections against full windows (docs/benchmarks.md, "Encoder windows").
"""

from __future__ import annotations

from typing import Literal

from edgescribe.engines.audio import FRAMES_PER_SECOND, N_FRAMES

EncoderWindow = Literal["adaptive", "full"]
ENCODER_WINDOWS: tuple[EncoderWindow, ...] = ("adaptive", "full")
# The default of engine.encoder_window and of the offline tools: adaptive windows meet every
# accuracy gate against full ones on tiny.en and base, English and Chinese, with the int8
# encoder's per-frame scales (docs/benchmarks.md, "Encoder windows").
DEFAULT_ENCODER_WINDOW: EncoderWindow = "adaptive"

# Window lengths in mel frames (100 per second): 10, 15, 20 and 30 s.
WINDOW_FRAMES = (1000, 1500, 2000, N_FRAMES)
# Padding kept after the content: without it the decoder loses the end of the window.
MARGIN_FRAMES = 2 * FRAMES_PER_SECOND


def window_frames(content_frames: int, mode: EncoderWindow) -> int:
    """Mel frames of the window the encoder reads for ``content_frames`` of audio."""
    if mode == "full":
        return N_FRAMES
    need = content_frames + MARGIN_FRAMES
    return next((frames for frames in WINDOW_FRAMES if frames >= need), N_FRAMES)
