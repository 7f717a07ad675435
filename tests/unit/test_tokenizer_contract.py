"""One tokenizer contract (`mmar.tokenizer`) for every modality: `mmar` never imports a tokenizer
package, it finds them through the registry; old import paths keep working; clear errors."""

import json
import subprocess
import sys

import pytest
import torch

from mmar.errors import ConfigError
from mmar.tokenizer import CONFIG_NAME, TOKENIZERS, build_tokenizer, load_tokenizer


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def test_mmar_imports_no_tokenizer_package():
    modules = "mmar, mmar.cli, mmar.lit, mmar.eval, mmar.data, mmar.units, mmar.tokenizer, mmar.stream"
    out = run_python(
        f"import sys; import {modules}; print(sorted(m for m in sys.modules if m.startswith('tokenizers_')))"
    )
    assert out.strip() == "[]"


def test_load_tokenizer_finds_the_package_of_a_saved_tokenizer(tmp_path):
    from tokenizers_visual import VQTokenizer

    torch.manual_seed(0)
    VQTokenizer(in_channels=1, ch=8, ch_mult=[1, 2], num_res_blocks=1, codebook_size=16).save_pretrained(
        tmp_path
    )
    code = (
        "from mmar.tokenizer import load_tokenizer; import sys; "
        f"t = load_tokenizer({str(tmp_path)!r}); "
        "print(type(t).__module__, 'tokenizers_visual' in sys.modules)"
    )
    assert run_python(code).split() == ["tokenizers_visual.vq", "True"]  # imported on demand


def test_old_import_paths_are_the_contract():
    import tokenizers_visual
    import tokenizers_visual.base as old

    assert old.load_tokenizer is load_tokenizer and old.TOKENIZERS is TOKENIZERS
    assert tokenizers_visual.Tokenizer is old.Tokenizer and "video_fsq" in TOKENIZERS


def test_unknown_names_and_broken_configs_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown tokenizer name 'nope'"):
        build_tokenizer({"name": "nope"})
    with pytest.raises(ConfigError, match="unknown argument"):
        build_tokenizer({"name": "vq", "colour": 3})
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"in_channels": 1}))
    with pytest.raises(ConfigError, match="has no 'name'"):
        load_tokenizer(tmp_path)
