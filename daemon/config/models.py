"""Configuration section: models (which model package serves from start-up, and which
larger one replaces it once loaded).

Consumed by daemon/scheduler.py (what the daemon loads) and `edgescribe build-engines`
(daemon/build_engines_command.py builds TensorRT engines for every package named here).
How the packages run is the engine section's job (engine.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from edgescribe.daemon.config.host import Host, unreadable_file
from edgescribe.daemon.config.schema import Section, setting

DEFAULT_PACKAGE_DIR = Path("/var/lib/edgescribe/model")  # whichever model install.sh --model exported
# The file that makes a directory a model package (engines/package.py writes it last, so it
# marks a complete export). Not imported from there: that would load NumPy into check-config.
# tests/daemon/test_config.py holds the two names equal.
MANIFEST = "manifest.json"
# The word-timing graph (engines/package.py ALIGNER), copied for the same reason; a package
# exported before word timing, or from weights without alignment heads, has none.
ALIGNER = "aligner.onnx"


class ModelsConfig(Section):
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

    def without_aligner(self) -> list[Path]:
        """The named packages that are model packages (a readable manifest) but cannot time
        words; a directory that is no package at all is host_problems' to report."""
        return [package for package in (self.serving, self.upgrade) if package is not None
                and not unreadable_file(package / MANIFEST) and not (package / ALIGNER).is_file()]

    def host_problems(self, host: Host) -> list[tuple[str, str]]:
        found = []
        for key, package in (("serving", self.serving), ("upgrade", self.upgrade)):
            if package is not None and unreadable_file(package / MANIFEST):
                what = "no such directory" if not package.is_dir() else f"not a model package (no readable {MANIFEST})"
                found.append((key, f"{package}: {what}; write one with: edgescribe export --source <model> --out {package}"))
        return found
