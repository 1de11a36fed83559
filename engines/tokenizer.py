"""Whisper's tokenizer over a model package's ``tokenizer.json``.

Text <-> token ids with the Hugging Face ``tokenizers`` library, plus what Whisper layers
on top: special tokens, language tokens, the start-of-transcript sequence, timestamp
tokens and the set of non-speech symbols that decoding suppresses.
"""

from __future__ import annotations

import logging
from functools import cached_property

import tokenizers

from edgescribe.engines.errors import ModelPackageError
from edgescribe.engines.package import TOKENIZER, ModelPackage, SpecialTokens

log = logging.getLogger(__name__)

TASKS = ("transcribe", "translate")
TIME_PRECISION = 0.02  # seconds per timestamp token step


class WhisperTokenizer:
    """Encode prompts, decode outputs and name the control tokens of one Whisper model."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        special: SpecialTokens,
        multilingual: bool,
        language_tokens: dict[str, int],
    ):
        self._tokenizer = tokenizer
        self.special = special
        self.multilingual = multilingual
        # English-only models answer to "en" alone, whatever their vocabulary still carries.
        self.language_tokens = dict(language_tokens) if multilingual else {}

    @classmethod
    def from_package(cls, package: ModelPackage) -> WhisperTokenizer:
        """The tokenizer of a model package, with the ids its manifest vouches for."""
        path = package.file(TOKENIZER)
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as error:  # the library raises a bare Exception for bad JSON
            raise ModelPackageError(f"{path}: not a readable tokenizer.json ({error})") from None
        manifest = package.manifest
        return cls(tokenizer, manifest.special_tokens, manifest.multilingual, manifest.language_tokens)

    # -- languages -----------------------------------------------------------------

    @cached_property
    def languages(self) -> tuple[str, ...]:
        """Language codes in token order (the model's own order, most trained first)."""
        if not self.multilingual:
            return ("en",)
        return tuple(sorted(self.language_tokens, key=self.language_tokens.__getitem__))

    def language_token(self, language: str) -> int:
        try:
            return self.language_tokens[language]
        except KeyError:
            raise ValueError(f"unknown language code {language!r} (known: {', '.join(self.languages)})") from None

    # -- sequences -----------------------------------------------------------------

    def sot_sequence(self, language: str | None = "en", task: str = "transcribe") -> list[int]:
        """The control tokens that start a transcript: SOT [, language, task].

        English-only models take SOT alone. A multilingual model given ``language=None``
        gets SOT alone too; the caller then detects the language from the SOT logits.
        """
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r} (use one of {', '.join(TASKS)})")
        sequence = [self.special.sot]
        if self.multilingual and language is not None:
            sequence.append(self.language_token(language))
            sequence.append(self.special.transcribe if task == "transcribe" else self.special.translate)
        return sequence

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added.

        Whisper's prompts and prefixes start with a space (" " + text.strip()), because
        words mid-sentence are tokenised with their leading space; callers use
        :meth:`encode_prompt` for that.
        """
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        return self.encode(" " + text.strip())

    def decode(self, tokens: list[int]) -> str:
        """Text of ``tokens``, dropping special and timestamp tokens."""
        eot = self.special.eot
        return self._tokenizer.decode([t for t in tokens if t < eot])

    def decode_with_timestamps(self, tokens: list[int]) -> str:
        """Text with timestamp tokens rendered as ``<|1.08|>`` (debugging and word splits)."""
        begin = self.special.timestamp_begin
        parts: list[str] = []
        run: list[int] = []
        for token in tokens:
            if token >= begin:
                parts.append(self._tokenizer.decode(run))
                parts.append(f"<|{(token - begin) * TIME_PRECISION:.2f}|>")
                run = []
            else:
                run.append(token)
        parts.append(self._tokenizer.decode(run))
        return "".join(parts)

    # -- suppression ---------------------------------------------------------------

    @cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens for speaker tags and sound annotations (♪, [MUSIC], (laughs), >>).

        Suppressing them keeps the model from writing text that was not spoken; basic
        punctuation stays allowed. Same set as openai-whisper's ``non_speech_tokens``.
        """
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        # Musical symbols (U+2640..U+267F) may span several tokens; their first token is
        # shared only with other symbols of that block, so suppressing it is safe.
        miscellaneous = set("♩♪♫♬♭♮♯")
        # Hyphens and apostrophes are fine inside words, not at the start of one.
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return tuple(sorted(result))

    def suppress_ids(self, suppress_tokens: tuple[int, ...] | list[int] | None) -> tuple[int, ...]:
        """Resolve a ``suppress_tokens`` option: ``-1`` means the non-speech set.

        Control tokens that must never be sampled as text are always added.
        """
        ids = set()
        for token in suppress_tokens or ():
            if token == -1:
                ids.update(self.non_speech_tokens)
            elif token >= 0:
                ids.add(token)
        s = self.special
        ids.update((s.transcribe, s.translate, s.sot, s.sot_prev, s.sot_lm, s.no_speech))
        return tuple(sorted(ids))
