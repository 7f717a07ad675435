"""The FSDP recipe for the L preset: its strategy parses and wraps exactly one FSDP unit per trunk block,
in bf16-mixed, and its gradient clipping callback clips the global norm."""

from pathlib import Path

import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.strategies import FSDPStrategy

from mmar.lit.fsdp_clip import FSDPGradientClip
from mmar.trunk import Block, Trunk, trunk_config

RECIPE = Path("configs/image/imagenet_ar_L_fsdp.yaml")


def parsed_trainer():
    parser = LightningArgumentParser()
    parser.add_lightning_class_args(Trainer, "trainer")
    return parser.parse_object({"trainer": yaml.safe_load(RECIPE.read_text())["trainer"]}).trainer


def test_recipe_wraps_one_fsdp_unit_per_trunk_block():
    trainer = parsed_trainer()
    assert (
        trainer.precision == "bf16-mixed"
        and yaml.safe_load(RECIPE.read_text())["model"]["init_args"]["trunk"] == "L"
    )
    assert trainer.strategy.class_path == "lightning.pytorch.strategies.FSDPStrategy"
    args = trainer.strategy.init_args
    assert args.auto_wrap_policy == {Block} and args.activation_checkpointing_policy == {Block}
    strategy = FSDPStrategy(**vars(args))  # built as Lightning builds it: the set becomes a ModuleWrapPolicy
    trunk = Trunk(trunk_config("debug", n_layer=3))
    wrapped = strategy.kwargs["auto_wrap_policy"]._run_policy(trunk, set(), {})
    assert set(wrapped) - {trunk} == set(trunk.blocks) and len(trunk.blocks) == 3


class GradNorm(Callback):
    """Records the total gradient norm the optimizer is about to apply (runs after the clip callback)."""

    norms: list[float]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.parameters()]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())


class Steep(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).sum() * 1e3  # gradients far above the clip norm

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 4)), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_gradient_clip_callback_clips_the_global_norm(tmp_path):
    recorder = GradNorm()
    recorder.norms = []
    callbacks = [FSDPGradientClip(max_norm=0.5), recorder]
    trainer = Trainer(
        max_steps=2, callbacks=callbacks, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(Steep())
    assert len(recorder.norms) == 2 and all(abs(n - 0.5) < 1e-4 for n in recorder.norms)
