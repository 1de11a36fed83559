"""Chinese in the plant's script: OpenCC conversion of what Whisper writes.

Whisper's multilingual models mix simplified and traditional characters, even within one
utterance. ``transcription.chinese_script`` names the one script a plant uses; every
hypothesis is converted before anything else sees it (the partials' agreement, finals,
alert matching), so stable text stays stable and alert phrases match in either script.

The conversion uses OpenCC's own dictionaries through ``opencc-py``, the OpenCC project's
pure-Python package (BYVoid/OpenCC, python-pure): no compiler and no platform wheel is
needed, so it installs the same on a Jetson (aarch64) as on x86. Text is first made
simplified and then converted to the target, so mixed input ends in one script; text
without Chinese characters passes through unchanged.
"""

from __future__ import annotations

import re
from typing import Callable

import opencc

# target -> the OpenCC configuration that turns simplified text into it
_FROM_SIMPLIFIED = {
    "traditional": "s2t",  # OpenCC's standard traditional characters
    "traditional_taiwan": "s2tw",  # Taiwan's character variants
    "traditional_hong_kong": "s2hk",  # Hong Kong's character variants
    "traditional_taiwan_phrases": "s2twp",  # Taiwan's variants and vocabulary (e.g. 软件 -> 軟體)
}


_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")


def _identity(text: str) -> str:
    return text


def _only_han(convert: Callable[[str], str]) -> Callable[[str], str]:
    # the pure-Python converter walks every character; most plants' text has none to convert
    return lambda text: convert(text) if _HAN.search(text) else text


def converter(script: str) -> Callable[[str], str]:
    """A function converting text into ``script`` (a ``transcription.chinese_script`` value)."""
    if script == "as_model":
        return _identity
    to_simplified = opencc.OpenCC("t2s").convert
    if script == "simplified":
        return _only_han(to_simplified)
    from_simplified = opencc.OpenCC(_FROM_SIMPLIFIED[script]).convert
    return _only_han(lambda text: from_simplified(to_simplified(text)))
