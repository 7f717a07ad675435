"""Channel-AR head (TokenBridge): causality over channels, the channel order found by brute force,
teacher forcing equal to the sampling steps, the loss, and next-token generation of [B, h, w, C] tokens."""

from __future__ import annotations

import math

import pytest
import torch

from mmar.conditioning import ClassCondition
from mmar.errors import ConfigError
from mmar.heads import TOKEN_HEADS, ChannelARHead, build_token_head
from mmar.kernels import cfg_mix
from mmar.sampling import Sampler
from mmar.trunk import Trunk, trunk_config
from mmar.units import build_unit

D, V, C = 32, 7, 5
ORDER = [3, 0, 4, 1, 2]


def make_head(order: list[int] | None = None, seed: int = 0) -> ChannelARHead:
    torch.manual_seed(seed)
    return ChannelARHead(D, V, C, width=16, depth=2, heads=2, channel_order=order).eval()


def inputs(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g), torch.randint(0, V, (n, C), generator=g)


class Recording(Sampler):
    """A Sampler that keeps the logits and progress of every pick."""

    def __post_init__(self):
        super().__post_init__()
        self.seen: list[tuple[torch.Tensor, float]] = []

    def pick(self, logits, progress=0.0, generator=None):
        self.seen.append((logits.clone(), progress))
        return super().pick(logits, progress, generator)


@pytest.mark.parametrize("order", [None, ORDER])
def test_changing_a_channel_changes_only_later_channels(order):
    head, (h, ids) = make_head(order), inputs()
    order = order or list(range(C))
    logits = head(h, ids)  # (N, C, V)
    assert logits.shape == (6, C, V)
    for j, c in enumerate(order):
        changed = ids.clone()
        changed[:, c] = (changed[:, c] + 1) % V
        after = head(h, changed)
        assert torch.equal(after[:, order[: j + 1]], logits[:, order[: j + 1]])  # itself and earlier
        if j + 1 < C:
            assert not torch.allclose(after[:, order[j + 1 :]], logits[:, order[j + 1 :]])


def test_channel_order_found_by_brute_force():
    """Which channels each channel's logits depend on, trying every other value of every channel."""
    head, (h, ids) = make_head(ORDER), inputs(n=3)
    base = head(h, ids)
    depends = {c: set() for c in range(C)}
    for src in range(C):
        for shift in range(1, V):
            changed = ids.clone()
            changed[:, src] = (changed[:, src] + shift) % V
            moved = (head(h, changed) - base).abs().amax(dim=(0, 2)) > 0  # (C,)
            depends.update({c: depends[c] | {src} for c in range(C) if moved[c]})
    found = sorted(range(C), key=lambda c: len(depends[c]))
    assert found == ORDER  # channel ORDER[k] depends on exactly k channels...
    assert all(depends[c] == set(ORDER[:k]) for k, c in enumerate(ORDER))  # ...the ones before it


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_teacher_forced_logits_equal_sampling_steps(cfg_scale):
    head = make_head(ORDER)
    hidden = torch.randn(8 if cfg_scale != 1 else 4, D, generator=torch.Generator().manual_seed(2))
    sampler = Recording(cfg_scale=cfg_scale, top_k=5, seed=0)
    ids = head.sample(hidden, sampler, 0.25, sampler.generator("cpu"))  # (B, C)
    assert ids.shape == (4, C) and ids.dtype == torch.long and int(ids.min()) >= 0 and int(ids.max()) < V
    fed = torch.cat([ids, ids]) if sampler.guided else ids  # both CFG halves read the chosen ids
    teacher = head(hidden, fed)  # (B', C, V)
    assert [p for _, p in sampler.seen] == [0.25] * C
    for k, (logits, _) in enumerate(sampler.seen):  # step k predicts channel ORDER[k]
        torch.testing.assert_close(logits, teacher[:, ORDER[k]], rtol=0, atol=1e-5)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_greedy_sampling_is_argmax_of_guided_teacher_logits(cfg_scale):
    head = make_head(ORDER)
    hidden = torch.randn(6 if cfg_scale != 1 else 3, D, generator=torch.Generator().manual_seed(3))
    ids = head.sample(hidden, Sampler(temperature=0.0, cfg_scale=cfg_scale), 0.0, None)  # (3, C)
    logits = head(hidden, torch.cat([ids, ids]) if cfg_scale != 1 else ids)  # (B', C, V)
    if cfg_scale != 1:
        cond, uncond = logits.chunk(2)
        logits = cfg_mix(cond.flatten(0, 1), uncond.flatten(0, 1), cfg_scale).unflatten(0, (3, C))
    assert torch.equal(ids, logits.argmax(-1))


def test_loss_is_mean_cross_entropy_over_channels():
    head, (h, ids) = make_head(ORDER), inputs()
    log_probs = head(h, ids).log_softmax(-1)  # (N, C, V)
    nll = -log_probs.gather(-1, ids[..., None])[..., 0]  # (N, C)
    torch.testing.assert_close(head.loss(h, ids), nll.mean(), rtol=0, atol=1e-5)
    ignored = ids.clone()
    ignored[:2] = -100  # whole tokens (e.g. padding) leave the mean
    torch.testing.assert_close(head.loss(h, ignored), nll[2:].mean(), rtol=0, atol=1e-5)


def test_loss_decreases_on_a_fixed_batch():
    head, (h, ids) = make_head(ORDER), inputs(n=16)
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = head.loss(h, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - math.log(V)) < 0.2  # near-uniform at initialisation
    assert losses[-1] < 0.25 * losses[0]


def test_embed_is_the_sum_of_per_channel_embeddings():
    head, (_, ids) = make_head(), inputs()
    expected = sum(head.embedding.weight[c * V + ids[:, c]] for c in range(C))  # (N, D)
    torch.testing.assert_close(head.embed(ids), expected, rtol=0, atol=1e-6)
    assert head.embed(ids.view(2, 3, C)).shape == (2, 3, D)


@pytest.fixture
def model():
    torch.manual_seed(0)
    trunk = Trunk(trunk_config("debug")).eval()
    kwargs = {"channels": C, "width": 16, "depth": 1, "heads": 2, "channel_order": ORDER}
    unit = build_unit(
        "next_token", d_model=64, grid=(2, 3), vocab_size=V, head="channel_ar", head_kwargs=kwargs
    )
    return trunk, unit.eval(), ClassCondition(10, 64).eval()


def test_next_token_prepares_and_trains_on_channel_tokens(model):
    trunk, unit, cond = model
    tokens = torch.randint(0, V, (2, 2, 3, C))
    batch = unit.prepare(tokens, cond(torch.tensor([1, 2])).tokens)
    assert batch.inputs.shape == (2, 6, 64) and batch.targets.shape == (2, 6, C)
    torch.testing.assert_close(batch.inputs[:, 1], unit.head.embed(tokens[:, 0, 0]), rtol=0, atol=0)
    loss = unit.loss(trunk(batch.inputs, batch.positions, batch.mask), batch)["loss"]
    assert abs(loss.item() - math.log(V)) < 0.2
    loss.backward()
    assert unit.head.token_embed.weight.grad is not None and trunk.blocks[0].attn.qkv.weight.grad is not None


def test_next_token_generates_channel_tokens(model):
    trunk, unit, cond = model
    sampler = Sampler(cfg_scale=2.0, top_k=4, seed=3)
    c = cond.for_sampling(torch.tensor([0, 5]), sampler.guided).tokens  # (2B, 1, D)
    cached = unit.generate(trunk, c, (2, 3), sampler)
    assert cached.shape == (2, 2, 3, C) and int(cached.min()) >= 0 and int(cached.max()) < V
    assert torch.equal(cached, unit.generate(trunk, c, (2, 3), sampler, use_cache=False))


def test_greedy_generation_is_a_fixed_point_of_teacher_forcing(model):
    trunk, unit, cond = model
    c = cond(torch.tensor([4, 7])).tokens  # (B, 1, D)
    tokens = unit.generate(trunk, c, (2, 3), Sampler(temperature=0.0))  # (B, 2, 3, C)
    batch = unit.prepare(tokens, c)
    hidden = trunk(batch.inputs, batch.positions, batch.mask)[:, 0:]  # cond position predicts token 0
    logits = unit.head(hidden, batch.targets)  # (B, N, C, V)
    torch.testing.assert_close(logits.argmax(-1), tokens.flatten(1, 2), rtol=0, atol=0)


def test_registered_and_bad_kwargs_are_config_errors():
    assert TOKEN_HEADS["channel_ar"] is ChannelARHead
    assert build_token_head("channel_ar", D, V, channels=C).token_shape == (C,)
    for kwargs, field in [
        ({"channels": 0}, "channels"),
        ({"channels": C, "width": 10, "heads": 4}, "width"),
        ({"channels": C, "channel_order": [0, 0, 1, 2, 3]}, "channel_order"),
        ({"channels": C, "channel_order": [0, 1, 2]}, "channel_order"),
    ]:
        with pytest.raises(ConfigError, match=field):
            ChannelARHead(D, V, **kwargs)
    head, (h, ids) = make_head(), inputs()
    with pytest.raises(ConfigError, match=r"head_kwargs\.channels=5"):
        head.loss(h, ids[:, :4])
    with pytest.raises(ConfigError, match=r"head_kwargs\.channels=5"):
        head.embed(ids[:, :4])
