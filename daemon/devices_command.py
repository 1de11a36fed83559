"""``edgescribe devices``: the ALSA capture PCMs and sound cards a stream can use."""

from __future__ import annotations

import argparse
import logging

from edgescribe.engines.errors import AudioInputError

log = logging.getLogger(__name__)

# PCM name prefix -> what a technician should know about it
_KINDS = {
    "hw": "the card itself; edgescribe converts rate and channels (recommended)",
    "plughw": "the card through ALSA's converter; use if hw: refuses to open",
    "dsnoop": "shared capture: several programs can record the card at once",
    "sysdefault": "the card's default device",
    "default": "the system default capture device (may change when devices are plugged in)",
    "null": "discards everything; not a microphone",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true",
                        help="also list surround/front/iec958 and similar playback-oriented PCMs")


def run(args: argparse.Namespace) -> int:
    import alsaaudio

    try:
        pcms = alsaaudio.pcms(alsaaudio.PCM_CAPTURE)
        cards = alsaaudio.cards()
    except alsaaudio.ALSAAudioError as error:
        raise AudioInputError(f"cannot list ALSA devices ({error})") from None
    print(format_listing(pcms, cards, show_all=args.all))
    return 0


def format_listing(pcms: list[str], cards: list[str], show_all: bool = False) -> str:
    lines = ["Sound cards:"]
    lines += [f"  {index}: {name}" for index, name in enumerate(cards)] or ["  (none found)"]
    shown = [name for name in pcms if show_all or _kind(name) in _KINDS or ":" not in name]
    lines.append("")
    lines.append("Capture PCMs (put one in a stream's 'device:'):")
    if not shown:
        lines.append("  (none found: is the microphone plugged in, and is this user in the 'audio' group?)")
    width = max((len(name) for name in shown), default=0)
    for name in shown:
        lines.append(f"  {name:<{width}}  {_KINDS.get(_kind(name), 'defined in the ALSA configuration')}")
    example = next((name for name in shown if _kind(name) == "hw"), shown[0] if shown else "hw:CARD=Device,DEV=0")
    lines += [
        "",
        "Use it in /etc/edgescribe/config.yaml, e.g.:",
        "  streams:",
        "    - name: mic1",
        f"      device: {example}",
        "Prefer CARD=<name> to card numbers: numbers change when USB devices are plugged in another order.",
    ]
    return "\n".join(lines)


def _kind(name: str) -> str:
    return name.split(":", 1)[0]
