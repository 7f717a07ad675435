"""A generator with an adaln trunk: its class or caption condition reaches every block through adaLN-Zero
in training and in KV-cached sampling with CFG; generators without adaln are built as before."""

import pytest
import torch

from mmar.errors import ConfigError
from mmar.lit import GeneratorModule, StreamModule
from mmar.sampling import Sampler
from mmar.trunk import AdaLNConditioned, Trunk

ADALN = {"adaln": True}


def move_modulation(model: GeneratorModule) -> None:
    """One SGD step on a training batch moves the zero-initialised ada layers (as training does)."""
    batch = {"image": torch.rand(4, 1, 32, 32) * 2 - 1, "label": torch.tensor([0, 1, 2, 3])}
    model.step_losses(batch)["loss"].backward()
    ada = [block.ada for block in model.trunk.blocks] + [model.trunk.final_ada]
    assert all(layer.weight.grad.abs().sum() > 0 for layer in ada)  # every block's modulation learns
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    model.zero_grad()


def test_class_condition_feeds_adaln_in_training_and_cached_cfg_sampling(debug_tokenizer):
    torch.manual_seed(0)
    model = GeneratorModule(tokenizer=debug_tokenizer, trunk_overrides=ADALN)
    move_modulation(model)
    batch = {"image": torch.rand(4, 1, 32, 32) * 2 - 1, "label": torch.tensor([0, 1, 2, 3])}
    cond = model.conditioning(batch["label"])
    trunk = model.conditioned_trunk(cond)  # what step_losses runs
    assert isinstance(trunk, AdaLNConditioned)
    trunk.cond.retain_grad()
    unit_batch = model.unit.prepare(model.tokens_of(batch), cond.tokens)
    model.unit.loss(trunk(unit_batch.inputs, unit_batch.positions, unit_batch.mask), unit_batch)[
        "loss"
    ].backward()
    assert trunk.cond.grad.abs().min() > 0  # the loss reads every row's class vector through adaLN

    model.eval()
    sampler = Sampler(cfg_scale=2.0, seed=1)
    cond = model.conditioning.for_sampling(torch.tensor([3, 5]), sampler.guided)
    trunk = model.conditioned_trunk(cond)
    assert len(trunk.cond) == 4  # the conditional rows, then the null's
    torch.testing.assert_close(trunk.cond[2:], model.conditioning.embed.weight[[10, 10]])  # the null class
    cached = model.generate_tokens(torch.tensor([3, 5]), sampler)
    full = model.generate_tokens(torch.tensor([3, 5]), sampler, use_cache=False)
    assert torch.equal(cached, full)
    assert model.generate(torch.tensor([3, 5]), sampler).shape == (2, 1, 32, 32)


def test_generators_without_adaln_are_unchanged(debug_tokenizer):
    model = GeneratorModule(tokenizer=debug_tokenizer)
    cond = model.conditioning.for_sampling(torch.tensor([1]), guided=True)
    assert isinstance(model.conditioned_trunk(cond), Trunk)  # no wrapper: the trunk itself
    assert not any(".ada." in key or "final_ada" in key for key in model.state_dict())


def test_pooled_caption_feeds_adaln(debug_rgb_tokenizer):
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    text = {"class_path": "mmar.conditioning.TextCondition", "init_args": {"max_length": 8}}
    model = GeneratorModule(tokenizer=debug_rgb_tokenizer, condition=text, trunk_overrides=ADALN).eval()
    for layer in [block.ada for block in model.trunk.blocks] + [model.trunk.final_ada]:
        torch.nn.init.normal_(layer.weight, std=0.3)
    prompts = ["a red circle", "two blue squares at the top left"]
    sampler = Sampler(cfg_scale=3.0, seed=2)
    cond = model.conditioning.for_sampling(prompts, sampler.guided)
    trunk = model.conditioned_trunk(cond)
    valid = cond.valid[0]  # a short caption: left padding does not enter its pooled vector
    torch.testing.assert_close(trunk.cond[0], cond.tokens[0, valid].mean(0))
    torch.testing.assert_close(trunk.cond[2], trunk.cond[3])  # the null caption, twice
    cached = model.generate_tokens(prompts, sampler)
    assert torch.equal(cached, model.generate_tokens(prompts, sampler, use_cache=False))


def test_a_stream_model_refuses_adaln(debug_text_tokenizer):
    with pytest.raises(ConfigError, match="stream model does not have"):
        StreamModule(debug_text_tokenizer, trunk_overrides=ADALN)
