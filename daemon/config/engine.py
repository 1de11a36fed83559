"""Configuration section(s): engine. Owned by the module that consumes it; see schema.py."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.config.schema import setting
