"""Audio tokenizers on the `mmar.tokenizer` contract.

- `RVQCodec` ("rvq_codec"): discrete, a SEANet codec with residual VQ trained with mmar (quantizer
  dropout), ids [B, frames, Q];
- `AudioKLCodec` ("audio_kl"): continuous, the same SEANet nets with a KL bottleneck and a data-fitted
  latent scale, latents [B, frames, D] for flow/diffusion-head generators (MELLE, DiTAR);
- `TransformersCodec` ("transformers_codec"): the pretrained codecs of `transformers` (EnCodec, DAC,
  Mimi), frozen, from a model folder or Hugging Face id (`pip install "mmar[codecs]"`).

All three derive from `tokenizers_audio.base.AudioTokenizer`, which holds what they share: the (frames,)
token grid and its checks, the input check and, for discrete ids, the ids check and `bitrate`.

Importing this package registers its tokenizers in `mmar.tokenizer.TOKENIZERS`, which
`mmar.tokenizer.load_tokenizer(path)` does by itself (entry point "mmar.tokenizers": audio) the first time
it meets a name it does not know. Audio is [B, C, samples] in [-1, 1]; the token grid is (frames,) and the
ids are [B, frames, Q] (Q residual levels).
"""

from tokenizers_audio.codec import RVQCodec
from tokenizers_audio.kl import AudioKLCodec
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
from tokenizers_audio.transformers_codecs import TransformersCodec

__all__ = [
    "AudioKLCodec",
    "MelSpectrogram",
    "MultiResolutionSTFTLoss",
    "MultiScaleMelLoss",
    "MultiScaleSTFTDiscriminator",
    "RVQCodec",
    "STFTDiscriminator",
    "TransformersCodec",
    "discriminator_hinge_loss",
    "feature_matching_loss",
    "generator_hinge_loss",
    "mel_filterbank",
    "mel_frequencies",
]
