"""One stream for text and images: vocabulary offsets, sequence layout and RoPE positions, the loss,
constrained decoding, KV-cached decoding across a modality switch, and bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmar.errors import ConfigError
from mmar.lit import StreamModule
from mmar.sampling import Sampler
from mmar.stream import IMAGE, TEXT, StreamLayout, StreamVocab, pad

CAPTIONS = ["a red circle on the left", "two blue squares in the middle and a green triangle on the right"]


def test_vocabulary_offsets_and_emission_ranges():
    vocab = StreamVocab(text=300, image=64)
    assert (vocab.image_offset, vocab.boi, vocab.eoi, vocab.size) == (300, 364, 365, 366)
    assert vocab.emits(TEXT) == (1, 300)  # EOS and every text token, never BOS
    assert vocab.emits(IMAGE) == (300, 364)
    ids = torch.tensor([0, 1, 299, 300, 363, 364, 365])  # BOS, EOS, text, image, image, BOI, EOI
    assert vocab.in_range(ids, TEXT).tolist() == [False, True, True, False, False, False, False]
    assert vocab.in_range(ids, IMAGE).tolist() == [False, False, False, True, True, False, False]
    text_only = StreamVocab(text=300)
    assert text_only.size == 300
    with pytest.raises(ConfigError, match="cannot emit 'image'"):
        text_only.emits(IMAGE)


def test_text_to_image_and_captioning_layouts():
    vocab = StreamVocab(text=10, image=4)
    layout = StreamLayout(vocab, (2, 3))
    image = torch.tensor([0, 1, 2, 3, 0, 1])
    ids, pos = layout.text_to_image([5, 6], image)
    assert ids.tolist() == [0, 5, 6, vocab.boi, 10, 11, 12, 13, 10, 11, vocab.eoi]
    # text (p, p); the image grid after BOI at p=3 starts at 4 on both axes; EOI after the longest side
    cells = [[4, 4], [4, 5], [4, 6], [5, 4], [5, 5], [5, 6]]
    assert pos.tolist() == [[0, 0], [1, 1], [2, 2], [3, 3], *cells, [7, 7]]
    ids, pos = layout.captioning(image, [5, 6])
    assert ids.tolist() == [0, vocab.boi, 10, 11, 12, 13, 10, 11, vocab.eoi, 5, 6, 1]
    assert pos[-4:].tolist() == [[5, 5], [6, 6], [7, 7], [8, 8]]  # EOI after the longest side, then text
    null, _ = layout.text_to_image(None)  # the CFG null prompt: the text dropped
    assert null.tolist() == [0, vocab.boi]
    text_only = StreamLayout(StreamVocab(text=10))
    ids, pos = text_only.document([5, 6])
    assert ids.tolist() == [0, 5, 6, 1] and pos.tolist() == [[0], [1], [2], [3]]  # 1D RoPE for text
    with pytest.raises(ConfigError, match="cannot hold images"):
        text_only.captioning(image)


def test_padding_sides():
    seqs = [(torch.tensor([7, 8, 9]), torch.arange(3)[:, None]), (torch.tensor([4]), torch.tensor([[5]]))]
    ids, pos, real = pad(seqs, pad_id=1)
    assert ids.tolist() == [[7, 8, 9], [4, 1, 1]] and real.tolist() == [[True] * 3, [True, False, False]]
    assert pos[1, 0].item() == 5
    ids, pos, real = pad(seqs, pad_id=1, left=True)
    assert ids.tolist() == [[7, 8, 9], [1, 1, 4]] and real.tolist() == [[True] * 3, [False, False, True]]
    assert pos[1, 2].item() == 5


def captioned_batch(model: StreamModule, n: int = 4) -> dict:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(model.vocab.image, (n, *model.layout.grid), generator=generator)
    return {"tokens": tokens, "caption": [CAPTIONS[i % 2] for i in range(n)]}


def test_loss_scores_each_token_over_its_modality_range(debug_stream):
    """The loss is the token mean of each generated token's cross-entropy over the ids its position can
    emit (as decoding samples); BOS/BOI/EOI targets are not scored; weights scale each modality."""
    model = debug_stream
    torch.manual_seed(0)
    batch = captioned_batch(model)
    ids, positions, real = model.sequences_of(batch)
    torch.manual_seed(0)  # the same layout draw again inside step_losses
    losses = model.step_losses(batch)
    logits = model.head(model.hidden_states(ids[:, :-1], positions[:, :-1]))  # (B, T-1, V)
    targets, real = ids[:, 1:], real[:, 1:]
    summed, count = 0.0, 0
    for modality in (TEXT, IMAGE):
        lo, hi = model.vocab.emits(modality)
        selected = real & (targets >= lo) & (targets < hi)
        summed += F.cross_entropy(logits[selected][:, lo:hi], targets[selected] - lo, reduction="sum")
        count += int(selected.sum())
    torch.testing.assert_close(losses["loss"], summed / count, rtol=1e-5, atol=1e-5)
    n_text, n_image = losses["text_tokens"], losses["image_tokens"]
    structural = int((real & (targets >= model.vocab.boi)).sum())  # BOI, EOI targets: one or two a row
    assert n_image == 4 * 64 and n_text + n_image + structural == int(real.sum())
    model.loss_weights = {TEXT: 0.0, IMAGE: 1.0}  # image tokens alone, still over every token's count
    torch.manual_seed(0)
    weighted = model.step_losses(batch)["loss"]
    model.loss_weights = {TEXT: 1.0, IMAGE: 1.0}
    torch.testing.assert_close(weighted, losses["image_loss"] * n_image / (n_text + n_image))


def test_right_padding_leaves_each_sequence_alone(debug_stream):
    """The summed cross-entropy of a padded batch is the sum over each sequence scored alone."""
    model = debug_stream
    layout = model.layout
    seqs = [layout.document([5, 6, 7, 8, 9]), layout.captioning(torch.arange(64) % 64, [9, 10])]

    def summed(sequences):
        losses = model.sequence_losses(*pad(sequences, model.vocab.eos))
        present = [m for m in (TEXT, IMAGE) if f"{m}_loss" in losses]
        return sum(losses[f"{m}_loss"] * losses[f"{m}_tokens"] for m in present)

    with torch.no_grad():
        torch.testing.assert_close(summed(seqs), summed(seqs[:1]) + summed(seqs[1:]), rtol=1e-5, atol=1e-4)


class Ones(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x)


def fresh(model: StreamModule) -> StreamModule:
    """A new random model over the same tokenizers (tests below change its weights)."""
    torch.manual_seed(1)
    hp = model.hparams
    return StreamModule(hp.text_tokenizer, hp.image_tokenizer, context_length=128).eval()


def biased(model: StreamModule, lo: int, hi: int) -> StreamModule:
    """A model for which ids [lo, hi) win every logit by 1e4: its trunk ends in a constant hidden state."""
    model = fresh(model)
    model.trunk.norm = Ones()
    with torch.no_grad():
        model.head.proj.weight.zero_()
        model.head.proj.weight[lo:hi] = 1e4 / model.trunk.config.d_model
    return model


def test_constrained_decoding_never_crosses_modalities(debug_stream):
    vocab = debug_stream.vocab
    text_lover = biased(debug_stream, *vocab.emits(TEXT))
    grids = text_lover.generate_image_tokens(CAPTIONS, Sampler(seed=0, cfg_scale=2.0))
    assert grids.shape == (2, *debug_stream.layout.grid)
    assert ((grids >= 0) & (grids < vocab.image)).all()  # image ids only, though text ids win the logits
    image_lover = biased(debug_stream, *vocab.emits(IMAGE))
    prompts = [image_lover.layout.captioning(torch.zeros(64, dtype=torch.long))]
    new = torch.stack([image_lover.layout.text_positions(image_lover.layout.next_position(prompts[0][1]), 6)])
    ids = image_lover.decode(prompts, new, TEXT, Sampler(seed=0))
    lo, hi = vocab.emits(TEXT)
    assert ((ids >= lo) & (ids < hi)).all()  # text ids (or EOS) only, never an image id or BOS


@pytest.mark.parametrize("guided", [False, True])
def test_kv_cached_decoding_equals_full_forward_across_a_modality_switch(debug_stream, guided):
    model = fresh(debug_stream)
    with torch.no_grad():  # a sharper random model, so that a wrong cache would change the tokens
        for p in model.trunk.parameters():
            p.mul_(10 if p.ndim > 1 else 1)
    layout, sampler = model.layout, Sampler(seed=3, cfg_scale=2.0 if guided else 1.0)
    # text -> image, with the CFG null rows shorter than the captions (left padding)
    prompts = [layout.text_to_image(t) for t in model.text_tokenizer.encode_batch(CAPTIONS)]
    prompts += [layout.text_to_image(None)] * 2 if guided else []
    new = torch.stack([layout.image_positions(layout.next_position(p)) for _, p in prompts])[:, :12]
    cached = model.decode(prompts, new, IMAGE, sampler)
    torch.testing.assert_close(cached, model.decode(prompts, new, IMAGE, sampler, use_cache=False))
    # image -> text
    prompts = [layout.captioning(torch.arange(64) % 64), layout.captioning(torch.arange(64).flip(0) % 64)]
    new = torch.stack([layout.text_positions(layout.next_position(p), 10) for _, p in prompts])
    plain = Sampler(seed=3)
    cached = model.decode(prompts, new, TEXT, plain)
    torch.testing.assert_close(cached, model.decode(prompts, new, TEXT, plain, use_cache=False))


def test_batched_prompts_of_different_lengths_decode_like_each_alone(debug_stream):
    """Left padding is invisible: greedy continuations of a batch equal those of each prompt alone."""
    prompts = ["a red", "two blue squares in the middle and"]
    together = debug_stream.continue_text(prompts, Sampler(temperature=0), max_tokens=6)
    alone = [debug_stream.continue_text([p], Sampler(temperature=0), max_tokens=6)[0] for p in prompts]
    assert together == alone


def test_generation_entry_points(debug_stream):
    images = debug_stream.generate(CAPTIONS, Sampler(seed=0, cfg_scale=1.5))
    assert images.shape == (2, 3, 32, 32)
    captions = debug_stream.caption(images, max_tokens=5)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert debug_stream.image_steps == 64


def test_bad_inputs_are_one_line_errors(debug_stream, debug_text_tokenizer, debug_rgb_tokenizer, tmp_path):
    model = debug_stream
    with pytest.raises(ConfigError, match="does not fit the model's context"):
        model.continue_text(["word " * 200])
    with pytest.raises(ConfigError, match="empty prompt"):
        model.continue_text(["  "])
    with pytest.raises(ConfigError, match="text-to-image only"):
        model.continue_text(["a red"], Sampler(cfg_scale=2.0))
    with pytest.raises(ConfigError, match="outside the text vocabulary"):
        model.step_losses({"tokens": torch.full((2, 8), model.vocab.text)})
    with pytest.raises(ConfigError, match="packed text"):
        model.step_losses({"tokens": torch.zeros(2, 8, 8, dtype=torch.long)})
    with pytest.raises(ConfigError, match="not the one this model was trained with"):
        StreamModule(debug_text_tokenizer, text_vocab_size=400, text_tokenizer_digest="0" * 16)
    with pytest.raises(ConfigError, match="has 64 codes but the model was trained with 512"):
        StreamModule(debug_text_tokenizer, debug_rgb_tokenizer, image_vocab_size=512)
    with pytest.raises(ConfigError, match="train_text_tokenizer"):
        StreamModule(str(tmp_path / "missing"))
    text_lm = StreamModule(debug_text_tokenizer)
    with pytest.raises(ConfigError, match="text-only LM"):
        text_lm.step_losses(captioned_batch(model))
