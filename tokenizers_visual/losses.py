"""The tokenizers' training losses live in `mmar.lit.losses`; this module keeps the old imports working."""

from mmar.lit.losses import PatchDiscriminator, PerceptualLoss, hinge_d_loss, hinge_g_loss

__all__ = ["PatchDiscriminator", "PerceptualLoss", "hinge_d_loss", "hinge_g_loss"]
