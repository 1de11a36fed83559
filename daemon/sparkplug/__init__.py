"""Sparkplug B edge node: each stream a device, transcripts as typed metrics (docs/sparkplug.md)."""
