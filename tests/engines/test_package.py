"""Model packages: manifest content, mel filters, atomic writes, and one-line verification errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from faster_whisper.feature_extractor import FeatureExtractor  # librosa's algorithm, in numpy

from edgescribe.daemon import cli
from edgescribe.engines import onnx_export
from edgescribe.engines.audio import mel_filter_bank
from edgescribe.engines.errors import ModelPackageError
from edgescribe.engines.package import ModelPackage
from edgescribe.engines.package_writer import write_package
from edgescribe.engines.sources import load_weights, resolve_builtin
from tests.fixtures.models import base_package, tiny_en_package  # noqa: F401  (fixtures)


def _clone(package: ModelPackage, target: Path) -> Path:
    """A private copy to damage: small files copied, the big graphs symlinked (never modified)."""
    target.mkdir()
    for path in package.dir.iterdir():
        if path.suffix == ".onnx":
            (target / path.name).symlink_to(path)
        else:
            shutil.copy(path, target / path.name)
    return target


def _load_error(directory: Path) -> str:
    with pytest.raises(ModelPackageError) as error:
        ModelPackage.load(directory)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_manifest_of_tiny_en(tiny_en_package):
    manifest = tiny_en_package.manifest
    assert manifest.format_version == 1 and not manifest.multilingual
    assert manifest.dims == tiny_en_package.dims and manifest.dims.n_vocab == 51864
    special = manifest.special_tokens
    assert (special.eot, special.sot, special.translate, special.transcribe) == (50256, 50257, 50357, 50358)
    assert (special.sot_lm, special.sot_prev, special.no_speech, special.no_timestamps) == (50359, 50360, 50361, 50362)
    assert special.timestamp_begin == 50363
    assert manifest.languages == ["en"] and manifest.language_tokens == {"en": 50258}
    assert manifest.suppress_blank == [220, 50256] and 50360 in manifest.suppress_tokens
    assert manifest.source["format"] == "ctranslate2" and len(manifest.source["sha256"]) == 64
    assert manifest.precision == {"encoder.onnx": "float32", "decoder.onnx": "float32",
                                  "encoder.int8.onnx": "int8", "decoder.int8.onnx": "int8", "aligner.onnx": "float32"}
    assert manifest.created_by.startswith("edgescribe ")
    assert set(manifest.files) == {"encoder.onnx", "decoder.onnx", "encoder.int8.onnx", "decoder.int8.onnx",
                                   "aligner.onnx", "tokenizer.json", "mel_filters.npy"}
    # word timing: tiny.en's config.json names its alignment heads
    assert manifest.alignment_heads == [(1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)]
    assert tiny_en_package.aligner_path().name == "aligner.onnx"


def test_manifest_of_multilingual_base(base_package):
    manifest = base_package.manifest
    assert manifest.multilingual and len(manifest.languages) == 99
    assert manifest.languages[:3] == ["en", "zh", "de"] and manifest.language_tokens["zh"] == 50260
    special = manifest.special_tokens
    assert (special.eot, special.sot, special.transcribe, special.no_timestamps) == (50257, 50258, 50359, 50363)
    assert special.timestamp_begin == 50364
    assert manifest.alignment_heads[0] == (3, 1)


def test_graph_paths(tiny_en_package):
    assert [p.name for p in tiny_en_package.graph_paths(prefer_int8=True)] == ["encoder.int8.onnx", "decoder.int8.onnx"]
    assert [p.name for p in tiny_en_package.graph_paths(prefer_int8=False)] == ["encoder.onnx", "decoder.onnx"]


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_equal_librosa_slaney(n_mels):
    expected = FeatureExtractor(feature_size=n_mels).mel_filters
    np.testing.assert_allclose(mel_filter_bank(n_mels), expected, rtol=1e-6, atol=1e-9)


def test_package_mel_filters_file(tiny_en_package):
    filters = tiny_en_package.mel_filters()
    assert filters.shape == (80, 201) and filters.dtype == np.float32


def test_verified_load_of_a_good_package(tiny_en_package, tmp_path):
    package = ModelPackage.load(_clone(tiny_en_package, tmp_path / "pkg"), verify=True)
    assert package.dims == tiny_en_package.dims


def test_missing_directory(tmp_path):
    assert _load_error(tmp_path / "none") == (f"model package {tmp_path / 'none'}: no such directory; "
                                              "run edgescribe export to create it")


def test_deleted_graph(tiny_en_package, tmp_path):
    directory = _clone(tiny_en_package, tmp_path / "pkg")
    (directory / "decoder.onnx").unlink()
    assert _load_error(directory) == f"model package {directory}: decoder.onnx is missing; re-run edgescribe export"


def test_flipped_byte_is_a_sha256_mismatch(tiny_en_package, tmp_path):
    directory = _clone(tiny_en_package, tmp_path / "pkg")
    data = bytearray((directory / "tokenizer.json").read_bytes())
    data[1000] ^= 0x01
    (directory / "tokenizer.json").write_bytes(bytes(data))
    assert _load_error(directory) == (f"model package {directory}: tokenizer.json is corrupt (sha256 mismatch); "
                                      "re-run edgescribe export")
    ModelPackage.load(directory, verify=False)  # sizes still match: the quick check passes


def test_truncated_file_is_a_size_mismatch(tiny_en_package, tmp_path):
    directory = _clone(tiny_en_package, tmp_path / "pkg")
    size = (directory / "mel_filters.npy").stat().st_size
    (directory / "mel_filters.npy").write_bytes((directory / "mel_filters.npy").read_bytes()[:100])
    assert _load_error(directory) == (f"model package {directory}: mel_filters.npy is corrupt (size 100 bytes, "
                                      f"manifest says {size}); re-run edgescribe export")


@pytest.mark.parametrize("content, expected", [
    ("{not json", "manifest.json is not valid JSON"),
    ('{"format_version": 2}', "manifest.json has format_version 2, this edgescribe reads 1; re-run edgescribe export"),
    ('{"format_version": 1, "dims": {}}', "manifest.json is malformed (bad or missing field 'n_mels')"),
])
def test_bad_manifest(tiny_en_package, tmp_path, content, expected):
    directory = _clone(tiny_en_package, tmp_path / "pkg")
    (directory / "manifest.json").write_text(content)
    message = _load_error(directory)
    assert message.startswith(f"model package {directory}: {expected}")


def test_missing_manifest_means_incomplete(tiny_en_package, tmp_path):
    directory = _clone(tiny_en_package, tmp_path / "pkg")
    (directory / "manifest.json").unlink()
    assert _load_error(directory) == (f"model package {directory}: manifest.json is missing (incomplete export?); "
                                      "re-run edgescribe export")


def test_write_replaces_an_existing_package_atomically(tmp_path):
    weights = load_weights("tiny.en")
    target = tmp_path / "tiny.en"
    target.mkdir()
    (target / "manifest.json").write_text("{}")
    (target / "stale.txt").write_text("old package")
    package = write_package(weights, target)
    assert not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.en"]  # no temp or old dirs left
    assert package.manifest.precision == {"encoder.onnx": "float32", "decoder.onnx": "float32", "aligner.onnx": "float32"}
    assert not package.has_int8()
    assert [p.name for p in package.graph_paths(prefer_int8=True)] == ["encoder.onnx", "decoder.onnx"]
    ModelPackage.load(target, verify=True)


def test_export_refuses_to_replace_a_directory_that_is_not_a_package(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(ModelPackageError) as error:
        write_package(load_weights("tiny.en"), tmp_path)
    assert str(error.value) == (f"{tmp_path}: exists and is not a model package (no manifest.json); "
                                "choose a new or empty directory")
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_failed_export_leaves_the_old_package(tmp_path, monkeypatch):
    weights = load_weights("tiny.en")
    target = tmp_path / "tiny.en"
    target.mkdir()
    (target / "manifest.json").write_text("old")

    def broken(_weights, **_options):
        raise RuntimeError("disk full")

    monkeypatch.setattr(onnx_export, "build_decoder", broken)
    with pytest.raises(RuntimeError):
        write_package(weights, target)
    assert (target / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.en"]


# -- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def export_cli(monkeypatch):
    """edgescribe.daemon.cli.main with only the export subcommand registered (other commands are other modules)."""
    monkeypatch.setitem(cli.__dict__, "COMMANDS", {"export": cli.COMMANDS["export"]})
    return cli.main


def test_cli_export_then_load(export_cli, tmp_path, capsys):
    out = tmp_path / "pkg"
    assert export_cli(["export", "--source", "tiny.en", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote encoder.onnx" in printed and "wrote decoder.onnx" in printed
    assert f"model package written to {out}:" in printed and "total" in printed
    ModelPackage.load(out, verify=True)


def test_cli_bad_source_is_one_line(export_cli, tmp_path, capsys):
    assert export_cli(["export", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "pkg")]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert err.startswith(f"edgescribe export: error: {tmp_path / 'missing'}: no such directory")


def test_cli_corrupt_model_bin_is_one_line(export_cli, tmp_path, capsys):
    source = tmp_path / "ct2"
    source.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(resolve_builtin("tiny.en") / name, source / name)
    (source / "model.bin").write_bytes((resolve_builtin("tiny.en") / "model.bin").read_bytes()[:50_000_000])
    assert export_cli(["export", "--source", str(source), "--out", str(tmp_path / "pkg")]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "model.bin: truncated at variable 'decoder/layer_" in err
    assert not (tmp_path / "pkg").exists()
