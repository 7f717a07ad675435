"""Shared fixtures: a tiny trained tokenizer on disk, shared by the CLI and generator tests."""

import pytest

from mmar.cli import main as mmar_main


@pytest.fixture(scope="session")
def debug_tokenizer(tmp_path_factory) -> str:
    """Folder of the debug VQ tokenizer, exported by a real `mmar fit` of configs/debug/vq.yaml."""
    root = tmp_path_factory.mktemp("debug_vq")
    export = root / "tokenizer"
    mmar_main(
        [
            "fit",
            "--config",
            "configs/debug/vq.yaml",
            f"--trainer.default_root_dir={root}",
            f"--model.init_args.export_dir={export}",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=false",
        ]
    )
    return str(export)
