"""Shared fixtures: tiny tokenizers and a tiny generator on disk, shared by the CLI, generator and
evaluation tests.

The Triton interpreter is switched on here, before anything imports triton: kernel tests run the
Triton path on CPU (impl="triton"); "auto" still picks torch on CPU.
"""

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from torch import nn

from mmar.cli import main as mmar_main


@pytest.fixture(scope="session")
def load_script():
    """load_script(name) imports scripts/<name>.py as a module (scripts/ is not a package)."""

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"scripts_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def one_line_error(capsys, *args, main=mmar_main) -> str:
    """Run `main(args)` (the mmar CLI, or a script's main), require exit 2 with one `error: ` line on
    stderr, and return that line."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def fit_debug_tokenizer(config: str, root) -> str:
    """Train a debug tokenizer recipe with a real `mmar fit` and return the folder it exports."""
    export = root / "tokenizer"
    mmar_main(
        [
            "fit",
            "--config",
            config,
            f"--trainer.default_root_dir={root}",
            f"--model.init_args.export_dir={export}",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=false",
        ]
    )
    return str(export)


@pytest.fixture(scope="session")
def debug_tokenizer(tmp_path_factory) -> str:
    """Folder of the debug VQ tokenizer (configs/debug/vq.yaml: 32 codes, 32x32 -> 8x8)."""
    return fit_debug_tokenizer("configs/debug/vq.yaml", tmp_path_factory.mktemp("debug_vq"))


@pytest.fixture(scope="session")
def debug_kl_tokenizer(tmp_path_factory) -> str:
    """Folder of the debug KL-VAE (configs/debug/kl.yaml: 4 channels, 32x32 -> 8x8, fitted scale)."""
    return fit_debug_tokenizer("configs/debug/kl.yaml", tmp_path_factory.mktemp("debug_kl"))


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


@pytest.fixture(scope="session")
def debug_rgb_tokenizer(tmp_path_factory) -> str:
    """Folder of a random tiny RGB VQ (64 codes, 32x32 -> 8x8), for the text-to-image shapes tests."""
    import torch

    from tokenizers_visual import VQTokenizer

    torch.manual_seed(0)
    vq = VQTokenizer(in_channels=3, ch=8, ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=8, codebook_size=64)
    export = tmp_path_factory.mktemp("debug_rgb_vq") / "tokenizer"
    vq.save_pretrained(export)
    return str(export)


@pytest.fixture(scope="session")
def debug_video_tokenizer(tmp_path_factory) -> str:
    """Folder of a random tiny causal video tokenizer (75 codes; 16x16 clips of 9 frames -> 3 x 4 x 4)."""
    from tokenizers_visual import VideoFSQTokenizer

    torch.manual_seed(0)
    video = VideoFSQTokenizer(
        in_channels=1, ch=4, ch_mult=[1, 2, 2], num_res_blocks=1, levels=[5, 5, 3], spatial_downsample=4
    )
    export = tmp_path_factory.mktemp("debug_video") / "tokenizer"
    video.save_pretrained(export)
    return str(export)


@pytest.fixture(scope="session")
def debug_audio_codec(tmp_path_factory) -> str:
    """Folder of a random tiny RVQ codec (4 levels of 16 codes; 0.25 s at 8 kHz -> 25 frames), shaped like
    configs/debug/audio_codec.yaml's."""
    from tokenizers_audio import RVQCodec

    torch.manual_seed(0)
    codec = RVQCodec(
        sample_rate=8000, channels=4, latent_dim=8, strides=[2, 4, 2, 5], num_quantizers=4, codebook_size=16
    )
    export = tmp_path_factory.mktemp("debug_audio") / "tokenizer"
    codec.eval().save_pretrained(export)
    return str(export)


@pytest.fixture(scope="session")
def debug_audio_kl(tmp_path_factory) -> str:
    """Folder of a random tiny continuous audio codec (latents of 4 dims; 0.25 s at 8 kHz -> 25 frames)."""
    from tokenizers_audio import AudioKLCodec

    torch.manual_seed(0)
    codec = AudioKLCodec(sample_rate=8000, channels=4, latent_dim=4, strides=[2, 4, 2, 5])
    export = tmp_path_factory.mktemp("debug_audio_kl") / "tokenizer"
    codec.eval().save_pretrained(export)
    return str(export)


@pytest.fixture(scope="session")
def debug_video_generator(debug_video_tokenizer, tmp_path_factory):
    """(model, last.ckpt) of a debug next-token video generator trained 3 steps with EMA on moving digits
    (16x16, 9 frames, a class per digit and direction: 80)."""
    from mmar.data import MovingDigitsDataModule
    from mmar.lit import GeneratorModule

    root = tmp_path_factory.mktemp("video_gen")
    model = GeneratorModule(
        tokenizer=debug_video_tokenizer, image_size=16, num_frames=9, num_classes=80, warmup_steps=1
    )
    data = MovingDigitsDataModule(
        image_size=16,
        digit_size=8,
        batch_size=4,
        num_clips_train=16,
        num_clips_val=4,
        labels="digit_direction",
    )
    return fit_three_steps(model, data, root)


@pytest.fixture(scope="session")
def debug_pairs_cache(debug_tokenizer, tmp_path_factory) -> str:
    """A token cache with images (as `scripts/make_post_train_pairs.py` writes): 40 digits-sized random
    images with random ids of the debug VQ tokenizer (vocabulary 32, 8x8 grid)."""
    import torch

    from mmar.data.token_cache import save_token_cache

    generator = torch.Generator().manual_seed(0)
    n = 40
    meta = {"vocab_size": 32, "grid": [8, 8], "num_items": n, "num_classes": 10, "image_shape": [1, 32, 32]}
    path = tmp_path_factory.mktemp("debug_pairs")
    images = torch.rand(n, 1, 32, 32, generator=generator) * 2 - 1
    tokens = torch.randint(32, (n, 8, 8), generator=generator)
    save_token_cache(path, tokens, torch.arange(n) % 10, meta, images=images)
    return str(path)


def fit_three_steps(model, data, root):
    """(model, last.ckpt) after 3 training steps with EMA weights in the checkpoint."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

    trainer = Trainer(
        accelerator="cpu",
        max_steps=3,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=root,
        callbacks=[EMAWeightAveraging(decay=0.5), ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
    )
    trainer.fit(model, data)
    return model, root / "ckpt" / "last.ckpt"


@pytest.fixture(scope="session")
def debug_generator(debug_tokenizer, tmp_path_factory):
    """(model, last.ckpt) of a debug next-token generator trained 3 steps with EMA on the digits."""
    from mmar.data import DigitsDataModule
    from mmar.lit import GeneratorModule

    root = tmp_path_factory.mktemp("gen")
    model = GeneratorModule(tokenizer=debug_tokenizer, image_size=32, warmup_steps=1)
    return fit_three_steps(model, DigitsDataModule(image_size=32, batch_size=8), root)


@pytest.fixture(scope="session")
def debug_text_tokenizer(tmp_path_factory) -> str:
    """Folder of a byte-level BPE (vocabulary 400) trained on the embedded corpus with 200 captions."""
    from mmar.data.text import embedded_corpus
    from mmar.text_tokenizer import TextTokenizer

    folder = tmp_path_factory.mktemp("debug_text_tokenizer")
    TextTokenizer.train((text for _, text in embedded_corpus(num_captions=200)), vocab_size=400).save(folder)
    return str(folder)


@pytest.fixture(scope="session")
def debug_stream(debug_text_tokenizer, debug_rgb_tokenizer):
    """A random unified StreamModule (debug trunk) over the debug text and RGB image tokenizers."""
    import torch

    from mmar.lit import StreamModule

    torch.manual_seed(0)
    return StreamModule(debug_text_tokenizer, debug_rgb_tokenizer, context_length=128).eval()


class RandomI3D(nn.Module):
    """StyleGAN-V's detector signature: float videos [N, 3, T, H, W] in [0, 255] -> [N, 400]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, kernel_size=3, padding=1)
        self.proj = nn.Linear(8 * 4, 400)

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ):
        if rescale:
            x = x / 127.5 - 1
        if resize:
            x = nn.functional.interpolate(x, size=(x.shape[2], 16, 16), mode="trilinear", align_corners=False)
        h = torch.relu(self.conv(x))  # (N, 8, T, 16, 16)
        h = nn.functional.adaptive_avg_pool3d(h, (4, 1, 1)).flatten(1)  # (N, 32): keeps the time order
        features = self.proj(h)
        return features if return_features else features.softmax(-1)


@pytest.fixture(scope="session")
def detector_path(tmp_path_factory) -> str:
    """A TorchScript file of `RandomI3D`: what `--i3d-weights` loads in the tests."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    torch.jit.script(RandomI3D()).save(str(path))
    return str(path)
