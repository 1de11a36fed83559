"""Configuration section: models (which model package serves from start-up, and which
larger one replaces it once loaded).

Consumed by daemon/scheduler.py (what the daemon loads) and `edgescribe build-engines`
(engines/tensorrt/build_command.py builds TensorRT engines for every package named here).
How the packages run is the engine section's job (engine.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgescribe.daemon.config.schema import setting

DEFAULT_PACKAGE_DIR = Path("/var/lib/edgescribe/model")  # whichever model install.sh --model exported


@dataclass
class ModelsConfig:
    serving: Path = setting(
        DEFAULT_PACKAGE_DIR,
        "Model package served from start-up: a directory written by `edgescribe export` "
        "(manifest.json, encoder.onnx, decoder.onnx); scripts/install.sh exports its --model "
        "here. A small one starts fast. `edgescribe build-engines` builds TensorRT engines for "
        "it and for upgrade.",
    )
    upgrade: Optional[Path] = setting(
        None,
        "Optional larger model package loaded in the background after start-up; transcription "
        "switches to it between utterances once it is ready, without losing audio. Empty: "
        "serving stays.",
        example="/var/lib/edgescribe/models/base",
    )

    def problems(self) -> list[tuple[str, str]]:
        if self.upgrade is None:
            return []
        if self.upgrade == self.serving:
            return [("upgrade", "is the serving package; name a different package, or leave it empty")]
        # engine_dir keeps one engine set per package directory name
        if self.upgrade.name == self.serving.name:
            return [("upgrade", f"has the same directory name as serving ({self.serving.name}); TensorRT "
                     "engines are kept per directory name, so give the two packages different names")]
        return []
