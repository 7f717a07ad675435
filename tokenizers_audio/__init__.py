"""Audio tokenizers on the `mmar.tokenizer` contract.

Importing this package registers its tokenizers in `mmar.tokenizer.TOKENIZERS` ("rvq_codec"), which
`mmar.tokenizer.load_tokenizer(path)` does by itself (entry point "mmar.tokenizers": audio) the first time
it meets a name it does not know. Audio is [B, C, samples] in [-1, 1]; the token grid is (frames,).
"""

from tokenizers_audio.codec import RVQCodec
from tokenizers_audio.losses import (
    MelSpectrogram,
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    MultiScaleSTFTDiscriminator,
    STFTDiscriminator,
    discriminator_hinge_loss,
    feature_matching_loss,
    generator_hinge_loss,
    mel_filterbank,
    mel_frequencies,
)

__all__ = [
    "MelSpectrogram",
    "MultiResolutionSTFTLoss",
    "MultiScaleMelLoss",
    "MultiScaleSTFTDiscriminator",
    "RVQCodec",
    "STFTDiscriminator",
    "discriminator_hinge_loss",
    "feature_matching_loss",
    "generator_hinge_loss",
    "mel_filterbank",
    "mel_frequencies",
]
