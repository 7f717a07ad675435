"""Training losses of tokenizers: the image ones of VQGAN (Esser et al., 2021) and LlamaGen (Sun et al.,
2024), and the multi-scale adversarial ones of EnCodec (Défossez et al., 2022) for the discriminators that
tokenizers bring themselves (`Tokenizer.make_discriminator`, e.g. the audio codecs' MS-STFT one).

- `PatchDiscriminator`: pix2pix's N-layer PatchGAN (Isola et al., 2017), one real/fake logit per patch;
- `hinge_d_loss` / `hinge_g_loss`: the hinge GAN objective used by VQGAN;
- `PerceptualLoss`: LPIPS (Zhang et al., 2018) with a VGG16 trunk, from the optional PyPI package `lpips`;
- `multiscale_hinge_d_loss` / `multiscale_hinge_g_loss`: EnCodec's hinge losses averaged over the
  sub-discriminators (scales) of a discriminator that returns a list of logit maps;
- `feature_matching_loss`: EnCodec's relative feature matching over the feature maps of such a
  discriminator.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmar.errors import ConfigError


class PatchDiscriminator(nn.Module):
    """pix2pix NLayerDiscriminator: images [B, C, H, W] -> patch logits [B, 1, H', W'].

    With `n_layers=3` and 256x256 inputs each logit sees a 70x70 patch. The spatial size of the output is
    that of `n_layers` stride-2 4x4 convs followed by two stride-1 4x4 convs (padding 1 throughout).

    Args:
        in_channels: image channels.
        ndf: channels of the first layer (doubled per layer, capped at 8 * ndf).
        n_layers: number of stride-2 layers.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))  # one logit per patch
        self.net = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # [B, C, H, W] -> [B, 1, H', W']


def _init_weights(module: nn.Module) -> None:
    """DCGAN initialisation, as in pix2pix and VQGAN."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator (autoencoder) side of the hinge GAN: -E[D(G(z))]."""
    return -logits_fake.mean()


class PerceptualLoss(nn.Module):
    """LPIPS distance with a VGG16 trunk, averaged over the batch; frozen, always in eval mode.

    The linear calibration layers of LPIPS ship inside the `lpips` package and are always loaded (no
    download). `pretrained` controls the VGG16 trunk: True loads torchvision's ImageNet weights
    (downloaded to the torch hub cache on first use), False keeps a random trunk, for tests only.

    Args:
        pretrained: load the ImageNet VGG16 trunk (False: random trunk, nothing downloads).
    """

    def __init__(self, pretrained: bool = True):
        super().__init__()
        try:
            import lpips
        except ImportError as err:
            raise ConfigError(
                'the perceptual loss needs the `lpips` package: pip install "mmar[perceptual]" '
                "(or set perceptual_weight: 0)"
            ) from err
        try:
            with warnings.catch_warnings():  # lpips calls torchvision with the deprecated `pretrained=`
                warnings.simplefilter("ignore", UserWarning)
                self.lpips = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=not pretrained, verbose=False)
        except OSError as err:  # includes urllib's URLError when offline
            raise ConfigError(
                f"could not load the VGG16 weights for the perceptual loss ({err}); run once with internet "
                "access to fill the torch hub cache (TORCH_HOME), or set perceptual_weight: 0"
            ) from err
        self.lpips.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        """Stay in eval mode (LPIPS has dropout before its linear layers)."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS distance between images x, y [B, C, H, W] in [-1, 1]; grayscale is repeated to RGB."""
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)  # [B, 3, H, W]
        return self.lpips(x, y).mean()


def multiscale_hinge_d_loss(
    real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor]
) -> torch.Tensor:
    """EnCodec's discriminator loss, averaged over sub-discriminators k:
    mean_k (E[relu(1 - D_k(x))] + E[relu(1 + D_k(x̂))]), logit maps of any shape."""
    if len(real_logits) != len(fake_logits) or not real_logits:
        raise ConfigError(f"logits do not pair up: {len(real_logits)} real vs {len(fake_logits)} fake")
    terms = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits)]
    return torch.stack(terms).mean()


def multiscale_hinge_g_loss(fake_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """EnCodec's adversarial loss of the generator, averaged over sub-discriminators k:
    mean_k E[relu(1 - D_k(x̂))]."""
    if not fake_logits:
        raise ConfigError("the discriminator returned no logits")
    return torch.stack([F.relu(1 - f).mean() for f in fake_logits]).mean()


def _flatten(feats: Sequence) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for f in feats:
        out.extend(_flatten(f) if isinstance(f, list | tuple) else [f])
    return out


def feature_matching_loss(real_feats: Sequence, fake_feats: Sequence, eps: float = 1e-8) -> torch.Tensor:
    """EnCodec's relative feature matching: mean over every feature map (all scales and layers) of
    mean|D(x) - D(x̂)| / mean|D(x)|; the real features are detached (no gradient into the target side).

    Args:
        real_feats: feature maps of the real input, per sub-discriminator (lists) or flat.
        fake_feats: those of the reconstruction, in the same nesting.
        eps: added to the normaliser.
    """
    real, fake = _flatten(real_feats), _flatten(fake_feats)
    if len(real) != len(fake) or not real:
        raise ConfigError(f"feature maps do not pair up: {len(real)} real vs {len(fake)} fake")
    terms = [
        F.l1_loss(f, r.detach()) / (r.detach().abs().mean() + eps) for r, f in zip(real, fake, strict=True)
    ]
    return torch.stack(terms).mean()


def has_features(feats: Sequence) -> bool:
    """Whether a discriminator's (nested) feature list holds any feature map."""
    return bool(_flatten(feats))
