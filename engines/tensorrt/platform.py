"""Facts about this device that decide whether a TensorRT engine built earlier still fits.

A serialised engine is only valid for the TensorRT version and GPU it was built with, and an
L4T/JetPack upgrade can change both (and the CUDA/cuDNN kernels under them). The L4T release
is read from the files JetPack installs under ``/etc``; ``root`` points elsewhere in tests
(a recorded fake ``/etc`` tree) and in containers that bind-mount the host's ``/etc``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

# `# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: ...`
_NV_TEGRA_RELEASE = re.compile(r"#\s*R(?P<major>\d+)\s*\(release\),\s*REVISION:\s*(?P<revision>[\d.]+)")
# dpkg status stanza of the package JetPack uses to pin the L4T version.
_L4T_CORE_VERSION = re.compile(r"^Package: nvidia-l4t-core\n(?:[^\n]+\n)*?Version: (?P<version>[\d.]+)", re.M)

# L4T release -> JetPack release, for messages and docs only (the cache key uses the L4T string).
JETPACK_BY_L4T = {
    "36.4.3": "6.2",
    "36.4.0": "6.1",
    "36.3.0": "6.0",
    "36.2.0": "6.0 DP",
}
# JetPack releases whose TensorRT (10.3) this code targets.
SUPPORTED_JETPACK = ("6.1", "6.2")


@dataclass(frozen=True)
class L4TRelease:
    version: str  # "36.4.3"
    source: str  # the file it was read from

    @property
    def jetpack(self) -> Optional[str]:
        return JETPACK_BY_L4T.get(self.version)

    def describe(self) -> str:
        jetpack = self.jetpack
        return f"L4T R{self.version}" + (f" (JetPack {jetpack})" if jetpack else "")


@dataclass(frozen=True)
class DeviceFacts:
    """What an engine is bound to. ``l4t`` is "none" off Jetson (desktop GPU or no GPU)."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    l4t: str

    def describe(self) -> str:
        return f"{self.gpu_name} (sm {self.compute_capability}), TensorRT {self.tensorrt_version}, {self.l4t}"


def read_l4t_release(root: Path = Path("/")) -> Optional[L4TRelease]:
    """The L4T release from ``/etc/nv_tegra_release``, else the nvidia-l4t-core dpkg entry."""
    release_file = root / "etc" / "nv_tegra_release"
    try:
        first_line = release_file.read_text(encoding="utf-8", errors="replace").splitlines()[0]
    except (OSError, IndexError):
        first_line = ""
    match = _NV_TEGRA_RELEASE.match(first_line.strip())
    if match:
        revision = match["revision"]
        if revision.count(".") == 0:
            revision += ".0"
        return L4TRelease(f"{match['major']}.{revision}", str(release_file))
    if first_line:
        log.warning("%s: unrecognised first line %r", release_file, first_line)

    status_file = root / "var" / "lib" / "dpkg" / "status"
    try:
        status = status_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = _L4T_CORE_VERSION.search(status)
    if not match:
        return None
    return L4TRelease(match["version"], str(status_file))


def device_facts(trt, root: Path = Path("/")) -> DeviceFacts:
    """Facts for the GPU behind ``trt`` (a :class:`engines.tensorrt.seam.TensorRT`)."""
    release = read_l4t_release(root)
    return DeviceFacts(
        tensorrt_version=trt.version,
        gpu_name=trt.gpu.name,
        compute_capability=trt.gpu.compute_capability,
        l4t=f"R{release.version}" if release else "none",
    )
