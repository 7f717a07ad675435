"""Shared fixtures: tiny tokenizers on disk, shared by the CLI and generator tests."""

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


@pytest.fixture(scope="session")
def debug_tokenbridge_tokenizer(tmp_path_factory) -> str:
    """Folder of a TokenBridge tokenizer (6 bits per channel) over a random 4-channel KL-VAE, 32 -> 8x8."""
    import torch

    from tokenizers_visual import KLVAETokenizer, PostQuantTokenizer

    torch.manual_seed(0)
    inner = KLVAETokenizer(in_channels=1, ch=8, ch_mult=[1, 2, 2], num_res_blocks=1, latent_dim=4)
    export = tmp_path_factory.mktemp("debug_tokenbridge") / "tokenizer"
    PostQuantTokenizer(inner, bits=6).save_pretrained(export)
    return str(export)
