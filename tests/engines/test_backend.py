"""Backend choice and its one-line reasons, and the device facts it rests on (fake /etc trees)."""

from __future__ import annotations

import importlib.util
import logging
import sys

import numpy as np
import pytest

from edgescribe.daemon import cli
from edgescribe.engines.backend import create_runner
from edgescribe.engines.errors import BackendUnavailableError
from edgescribe.engines.onnx_runner import OnnxRunner
from edgescribe.engines.tensorrt import seam, validation
from edgescribe.engines.tensorrt.build import build_engines
from edgescribe.engines.tensorrt.builder import BuildOptions
from edgescribe.engines.tensorrt.platform import read_l4t_release
from edgescribe.engines.tensorrt.runner import TensorRTRunner
from tests.fixtures.fake_tensorrt import FakeTensorRT
from tests.fixtures.model_package import onnx_sessions, tiny_package  # noqa: F401 (fixtures)

# First lines of /etc/nv_tegra_release as JetPack 6.2 and 6.1 write them.
JETPACK_62 = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"
JETPACK_61 = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n"
DPKG_STATUS = """Package: nvidia-l4t-kernel
Status: install ok installed
Version: 5.15.148-tegra-36.4.3-20250107174145

Package: nvidia-l4t-core
Status: install ok installed
Priority: standard
Version: 36.4.3-20250107174145
Description: NVIDIA Core Package
"""


def backend_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edgescribe.engines.backend"]


def fake_etc(root, release=None, dpkg=None):
    if release is not None:
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "etc" / "nv_tegra_release").write_text(release)
    if dpkg is not None:
        (root / "var" / "lib" / "dpkg").mkdir(parents=True, exist_ok=True)
        (root / "var" / "lib" / "dpkg" / "status").write_text(dpkg)
    return root


# -- platform ----------------------------------------------------------------------------


def test_l4t_release_from_nv_tegra_release(tmp_path):
    release = read_l4t_release(fake_etc(tmp_path, JETPACK_62))
    assert release.version == "36.4.3" and release.jetpack == "6.2"
    assert release.describe() == "L4T R36.4.3 (JetPack 6.2)"
    assert read_l4t_release(fake_etc(tmp_path / "b", JETPACK_61)).jetpack == "6.1"


def test_l4t_release_falls_back_to_dpkg_and_is_none_off_jetson(tmp_path, caplog):
    assert read_l4t_release(fake_etc(tmp_path, dpkg=DPKG_STATUS)).version == "36.4.3"
    assert read_l4t_release(tmp_path / "desktop") is None
    garbled = fake_etc(tmp_path / "g", "garbage\n")
    assert read_l4t_release(garbled) is None
    assert "unrecognised first line 'garbage'" in caplog.text


def test_only_tensorrt_10_is_accepted():
    with pytest.raises(BackendUnavailableError, match=r"TensorRT 8\.6\.2 is not supported.*JetPack 6\.0 ships TensorRT 8\.6"):
        seam.check_version("8.6.2")
    seam.check_version("10.3.0")


def test_seam_load_here_says_tensorrt_is_missing():
    if "tensorrt" in sys.modules or _importable("tensorrt"):
        pytest.skip("TensorRT is installed on this machine")
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed for this Python"):
        seam.load()


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


# -- backend choice ----------------------------------------------------------------------


@pytest.mark.skipif(_importable("tensorrt"), reason="checks the machine without TensorRT")
def test_auto_without_tensorrt_picks_onnxruntime_and_says_why(tiny_package, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="edgescribe.engines.backend")
    runner = create_runner(tiny_package, "auto", engine_dir=tmp_path, threads=1)
    assert isinstance(runner, OnnxRunner)
    [line] = backend_lines(caplog)
    assert line.startswith("backend: onnxruntime (TensorRT not used: TensorRT is not installed for this Python")


@pytest.mark.skipif(_importable("tensorrt"), reason="checks the machine without TensorRT")
def test_tensorrt_requested_without_tensorrt_is_one_clear_line(tiny_package, tmp_path):  # noqa: F811
    with pytest.raises(BackendUnavailableError) as raised:
        create_runner(tiny_package, "tensorrt", engine_dir=tmp_path)
    message = str(raised.value)
    assert message.startswith("TensorRT backend unavailable: TensorRT is not installed") and "\n" not in message


def test_unknown_backend_is_refused(tiny_package):  # noqa: F811
    with pytest.raises(BackendUnavailableError, match="unknown backend 'cuda'"):
        create_runner(tiny_package, "cuda")


def test_onnxruntime_requested_is_logged_as_configured(tiny_package, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="edgescribe.engines.backend")
    assert isinstance(create_runner(tiny_package, "onnxruntime", threads=1), OnnxRunner)
    assert backend_lines(caplog)[-1] == "backend: onnxruntime (configured)"


def _build_for_fake_orin(package, onnx_sessions, engine_dir):
    fake = FakeTensorRT(sessions=onnx_sessions)
    build_engines(package, engine_dir, BuildOptions(max_batch=2, max_prompt_tokens=32), fake, threads=1)
    return engine_dir, fake


@pytest.fixture(scope="module")
def built(tiny_package, onnx_sessions, tmp_path_factory):  # noqa: F811
    """Validated engines for the fake Orin, built once for the tests below."""
    return _build_for_fake_orin(tiny_package, onnx_sessions, tmp_path_factory.mktemp("engines"))


def test_auto_with_validated_engines_for_this_device_picks_tensorrt(tiny_package, built, caplog):  # noqa: F811
    engine_dir, fake = built
    caplog.set_level(logging.INFO, logger="edgescribe.engines.backend")
    runner = create_runner(tiny_package, "auto", engine_dir=engine_dir, load_tensorrt=lambda: fake)
    assert isinstance(runner, TensorRTRunner) and runner.name == "tensorrt"
    line = backend_lines(caplog)[-1]
    assert line == (f"backend: tensorrt (validated fp16/fp16 engines in {engine_dir / 'tiny.en'} "
                    "for Orin (sm 8.7), TensorRT 10.3.0, none)")


def test_auto_with_engines_for_another_gpu_falls_back_with_the_reason(tiny_package, built, onnx_sessions, caplog):  # noqa: F811
    engine_dir, _ = built
    other = FakeTensorRT(sessions=onnx_sessions)
    other.gpu.name = "NVIDIA GeForce RTX 4090"
    caplog.set_level(logging.INFO, logger="edgescribe.engines.backend")
    assert isinstance(create_runner(tiny_package, "auto", engine_dir=engine_dir, threads=1, load_tensorrt=lambda: other), OnnxRunner)
    line = backend_lines(caplog)[-1]
    assert "is stale: gpu_name: built for Orin, now NVIDIA GeForce RTX 4090" in line
    assert f"build them with: edgescribe build-engines --model {tiny_package.dir} --out {engine_dir}" in line


def test_tensorrt_requested_without_engines_tells_the_command_to_run(tiny_package, onnx_sessions, tmp_path):  # noqa: F811
    fake = FakeTensorRT(sessions=onnx_sessions)
    with pytest.raises(BackendUnavailableError) as raised:
        create_runner(tiny_package, "tensorrt", engine_dir=tmp_path, load_tensorrt=lambda: fake)
    assert str(raised.value) == (
        f"TensorRT backend unavailable: no encoder engine at {tmp_path / 'tiny.en' / 'encoder.engine'}; "
        f"build them with: edgescribe build-engines --model {tiny_package.dir} --out {tmp_path}"
    )
    with pytest.raises(BackendUnavailableError, match="no engine directory configured"):
        create_runner(tiny_package, "tensorrt", engine_dir=None, load_tensorrt=lambda: fake)


def test_engine_that_fails_to_deserialise_falls_back_naming_the_file(tiny_package, built, onnx_sessions, caplog):  # noqa: F811
    engine_dir, _ = built
    broken = FakeTensorRT(sessions=onnx_sessions, unloadable=1)
    caplog.set_level(logging.INFO, logger="edgescribe.engines.backend")
    assert isinstance(create_runner(tiny_package, "auto", engine_dir=engine_dir, threads=1, load_tensorrt=lambda: broken), OnnxRunner)
    line = backend_lines(caplog)[-1]
    assert f"TensorRT not used: {engine_dir / 'tiny.en' / 'encoder.engine'}: TensorRT could not deserialise" in line
    assert line.endswith("rebuild it with edgescribe build-engines --force)")


def test_l4t_upgrade_makes_engines_stale_for_the_daemon(tiny_package, built, tmp_path, caplog):  # noqa: F811
    engine_dir, fake = built
    caplog.set_level(logging.INFO, logger="edgescribe.engines.backend")
    root = fake_etc(tmp_path, JETPACK_62)
    runner = create_runner(tiny_package, "auto", engine_dir=engine_dir, threads=1, load_tensorrt=lambda: fake, system_root=root)
    assert isinstance(runner, OnnxRunner)
    assert "l4t: built for none, now R36.4.3" in backend_lines(caplog)[-1]


def test_tensorrt_runner_decodes_like_onnx_runtime(tiny_package, built):  # noqa: F811
    """The runner's device-side cache bookkeeping (each layer's K/V input bound at its offset
    into one buffer), exercised through the GPU double, against ONNX Runtime."""
    engine_dir, fake = built
    runner = create_runner(tiny_package, "tensorrt", engine_dir=engine_dir, load_tensorrt=lambda: fake)
    reference = OnnxRunner(tiny_package, threads=1, prefer_int8=False)
    mel = validation.reference_mel(tiny_package.mel_filters())
    mel2 = np.concatenate([mel, np.zeros_like(mel)])  # speech and silence side by side
    special = tiny_package.manifest.special_tokens
    caches = [r.new_cache(2) for r in (reference, runner)]
    crosses = [r.encode(mel2) for r in (reference, runner)]
    prompt = np.array([[special.sot, special.no_timestamps]] * 2)
    offsets = np.array([0, 0])
    logits = [r.decode(prompt, offsets, c, x) for r, c, x in zip((reference, runner), caches, crosses)]
    # Rows at different offsets from here on: row 1 re-feeds a token, row 0 moves on.
    for step in range(4):
        np.testing.assert_allclose(logits[1], logits[0], atol=0.05)
        token = np.argmax(logits[0], axis=-1)[:, None]
        offsets = offsets + np.array([2 if step == 0 else 1, 1])
        logits = [r.decode(token, offsets, c, x) for r, c, x in zip((reference, runner), caches, crosses)]
    np.testing.assert_allclose(logits[1], logits[0], atol=0.05)
    with pytest.raises(ValueError, match="batch must be 1..2"):
        runner.new_cache(3)


@pytest.mark.skipif(_importable("tensorrt"), reason="checks the machine without TensorRT")
def test_transcribe_with_backend_tensorrt_here_is_one_error_line(tiny_package, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr(cli, "COMMANDS", {"transcribe": cli.COMMANDS["transcribe"]})
    code = cli.main(["transcribe", "--model", str(tiny_package.dir), "--backend", "tensorrt",
                     "--engine-dir", str(tmp_path), str(validation.REFERENCE_WAV)])
    assert code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("INFO ")]
    assert err == [
        "edgescribe transcribe: error: TensorRT backend unavailable: TensorRT is not installed for this Python "
        "(No module named 'tensorrt'); on a Jetson install JetPack 6.1 or 6.2 (python3-libnvinfer) and create "
        "the virtualenv with --system-site-packages"
    ]
