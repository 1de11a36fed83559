"""``edgescribe devices`` lists real ALSA capture PCMs (the file-plugin test devices)."""

from __future__ import annotations

import argparse

from edgescribe.daemon import devices_command
from edgescribe.daemon.devices_command import format_listing
from tests.fixtures.alsa import AlsaDevices, alsa_devices  # noqa: F401 (fixture)


def test_lists_the_configured_capture_pcms(alsa_devices: AlsaDevices, capsys):
    parser = argparse.ArgumentParser()
    devices_command.add_arguments(parser)
    assert devices_command.run(parser.parse_args([])) == 0
    out = capsys.readouterr().out
    for name in ("speech16k", "speech48k", "late_mic"):
        assert f"  {name} " in out
    assert "Capture PCMs" in out and "device: " in out


def test_listing_explains_names_and_suggests_a_hw_device():
    out = format_listing(
        ["default", "hw:CARD=Device,DEV=0", "plughw:CARD=Device,DEV=0", "front:CARD=Device,DEV=0"], ["Device"]
    )
    assert "0: Device" in out
    assert "front:" not in out  # playback-oriented names hidden unless --all
    assert "device: hw:CARD=Device,DEV=0" in out
    assert "converter" in out.split("plughw:CARD=Device,DEV=0", 1)[1].splitlines()[0]


def test_no_devices_says_what_to_check():
    out = format_listing([], [])
    assert "(none found" in out and "audio' group" in out
