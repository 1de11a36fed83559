"""Configuration section: transcription (what the live transcriber asks Whisper for and
which results it keeps).

Consumed by daemon/streaming.py.
"""

from __future__ import annotations

from typing import Literal

from edgescribe.daemon.config.schema import Section, setting

# The segmenter hands out the utterance so far at this pace when it is built without a
# transcription section (tests, tools); the daemon passes partial_interval_s.
DEFAULT_PARTIAL_INTERVAL_S = 1.0

# the targets daemon/chinese_script.py converts to (as_model: no conversion)
ChineseScript = Literal[
    "as_model", "simplified", "traditional", "traditional_taiwan", "traditional_hong_kong", "traditional_taiwan_phrases"
]


class TranscriptionConfig(Section):
    language: str = setting(
        "en",
        "Spoken language as a Whisper language code (en, de, zh, ...), or auto to detect it per "
        "utterance. English-only models (*.en) always use en.",
        pattern=r"auto|[a-z]{2,3}",
        pattern_text="auto or a two/three-letter language code",
    )
    task: Literal["transcribe", "translate"] = setting(
        "transcribe",
        "transcribe keeps the spoken language; translate outputs English (multilingual models only).",
    )
    initial_prompt: str = setting(
        "",
        "Text given to Whisper before every utterance to steer spelling and style, e.g. "
        "'Line 3, torque check, OK.' Keep it short; empty for none.",
    )
    hotwords: list[str] = setting(
        default_factory=list,
        help="Words Whisper should prefer (part names, product codes). They are put in the prompt "
        "ahead of initial_prompt, as faster-whisper does.",
        example=["Orin", "spindle"],
    )
    partials: bool = setting(
        True,
        "Publish partial transcripts (QoS 0, never stored) while someone is still speaking; off, "
        "no partial is decoded at all. Finals are always published.",
    )
    partial_interval_s: float = setting(
        DEFAULT_PARTIAL_INTERVAL_S,
        "While someone speaks, the utterance so far is decoded for a partial this often (in "
        "seconds of audio). Shorter gives livelier partials for more inference. Partials are "
        "skipped while finals wait and never take more than half of the inference time, so a "
        "final waits for at most one partial.",
        min=0.2,
        max=30.0,
        unit="s",
    )
    speculative_final: bool = setting(
        True,
        "Start the final decode when a pause begins instead of when the segmenter's "
        "min_silence_s has passed; if speech resumes the early decode is thrown away. "
        "Cuts final latency by about min_silence_s for one extra decode per resumed pause.",
    )
    no_speech_threshold: float = setting(
        0.6,
        "A result is dropped when Whisper's no-speech probability is above this and its average "
        "log probability is below log_prob_threshold (the openai-whisper rule).",
        min=0.0,
        max=1.0,
    )
    log_prob_threshold: float = setting(
        -1.0,
        "Average token log probability below which a final is decoded again at a higher "
        "temperature (and which, with no_speech_threshold, marks silence).",
        min=-20.0,
        max=0.0,
    )
    compression_ratio_threshold: float = setting(
        2.4,
        "gzip compression ratio of the text above which the result is treated as a repetition "
        "loop: decoded again at a higher temperature, dropped if every temperature loops.",
        min=1.0,
        max=10.0,
    )
    temperatures: list[float] = setting(
        default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        help="Temperatures tried in turn for a final whose result fails a gate. The first is used "
        "for partials. One entry disables the fallback.",
    )
    beam_size: int = setting(
        1,
        "Beams of the beam search for finals at temperature 0; 1 decodes greedily. 5 is usually a "
        "little more accurate on a loud floor and costs several times the decoding time of a final "
        "(see docs/benchmarks.md). Partials and the hotter fallback retries are always greedy.",
        min=1,
        max=16,
    )
    condition_on_previous_text: bool = setting(
        False,
        "Put the stream's previous final into the prompt. Off by default: on live audio it lets "
        "one hallucination repeat itself into every following utterance.",
    )
    chinese_script: ChineseScript = setting(
        "as_model",
        "Script of Chinese text in partials, finals and alert matching: as_model keeps Whisper's own "
        "mix of simplified and traditional characters; the others convert every Han character with "
        "OpenCC's dictionaries (traditional_taiwan_phrases also uses Taiwan's vocabulary). For "
        "Chinese plants only: Japanese kanji would be converted too.",
    )
    word_timestamps: bool = setting(
        False,
        "Give finals a words array: each word's start and end in the stream's audio time and its "
        "probability, aligned from the model's cross-attention as openai-whisper does. Off by default "
        "to keep payloads small; costs one aligner pass per final window. Needs model packages "
        "exported with word timing (aligner.onnx): check-config, run and model/switch refuse a "
        "serving or upgrade package without one; re-export it with `edgescribe export`.",
    )
    max_pending_finals: int = setting(
        32,
        "Finals waiting for inference before the capture side is held back. When inference "
        "cannot catch up, audio is then lost at the capture ring buffer and reported as a gap.",
        min=1,
        max=1024,
    )

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if not self.temperatures:
            found.append(("temperatures", "needs at least one temperature (e.g. [0.0])"))
        elif any(not 0.0 <= t <= 2.0 for t in self.temperatures):
            found.append(("temperatures", "each temperature must be between 0.0 and 2.0"))
        elif list(self.temperatures) != sorted(self.temperatures):
            found.append(("temperatures", "temperatures must be in increasing order"))
        if any(not word.strip() for word in self.hotwords):
            found.append(("hotwords", "hotwords must not be empty strings"))
        return found
