"""Non-finite training: an absurd learning rate ends `mmar fit` with one error line and no NaN checkpoint,
a NaN step can be skipped instead, and the sampling scripts refuse a diverged checkpoint."""

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from mmar.cli import main as mmar_main
from mmar.errors import ConfigError
from mmar.lit.loading import load_generator
from mmar.lit.nonfinite import NonFiniteGuard, NonFiniteLossError

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.logger=false"]


def all_finite(path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_absurd_lr_stops_fit_with_one_line_error_and_no_nan_checkpoint(debug_tokenizer, tmp_path, capsys):
    # the probe: lr 1e6 on the debug recipe went NaN at step 3 and still exited 0 with a NaN checkpoint
    args = ["fit", "--config", "configs/debug/ar.yaml", f"--model.init_args.tokenizer={debug_tokenizer}"]
    args += ["--model.init_args.lr=1e6", "--trainer.max_steps=20", f"--trainer.default_root_dir={tmp_path}"]
    with pytest.raises(SystemExit) as exit_info:
        mmar_main([*args, *QUIET])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the training loss or its gradients became NaN/inf at step")
    assert "lower model.init_args.lr (now 1000000.0)" in last and "Traceback" not in err
    assert all(all_finite(ckpt) for ckpt in tmp_path.rglob("*.ckpt"))


class NaNAtSecondStep(pl.LightningModule):
    """One linear layer whose loss is NaN at batch `bad` (every batch from `bad` on with `stay_bad`)."""

    def __init__(self, bad: int = 1, stay_bad: bool = False):
        super().__init__()
        self.layer, self.bad, self.stay_bad, self.weights = nn.Linear(4, 1), bad, stay_bad, []

    def training_step(self, batch, batch_idx):
        self.weights.append(self.layer.weight.detach().clone())
        loss = self.layer(batch[0]).pow(2).mean()
        nan = batch_idx == self.bad or (self.stay_bad and batch_idx > self.bad)
        return loss * float("nan") if nan else loss

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(8, 4))
        return torch.utils.data.DataLoader(data, batch_size=2)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1)


def tiny_trainer(guard: NonFiniteGuard, tmp_path, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        callbacks=[guard], default_root_dir=tmp_path, logger=False, enable_progress_bar=False, **kwargs
    )


def test_skip_drops_the_nan_step_and_training_goes_on(tmp_path):
    module, guard = NaNAtSecondStep(bad=1), NonFiniteGuard(action="skip")
    tiny_trainer(guard, tmp_path, max_steps=4, gradient_clip_val=1.0).fit(module)
    assert guard.num_skipped == 1 and len(module.weights) == 4
    torch.testing.assert_close(module.weights[2], module.weights[1], rtol=0, atol=0)  # step 1 changed nothing
    assert not torch.equal(module.weights[3], module.weights[2])  # the next step trains again
    ckpt = next(tmp_path.rglob("*.ckpt"))  # the end-of-training checkpoint is finite
    assert all_finite(ckpt)


def test_skip_still_stops_a_diverged_run(tmp_path):
    module, guard = NaNAtSecondStep(bad=0, stay_bad=True), NonFiniteGuard(action="skip", max_skips=2)
    stopped = r"at step 2 \(3 steps in a row\); .*: lower model.init_args.lr or"
    with pytest.raises(NonFiniteLossError, match=stopped):
        tiny_trainer(guard, tmp_path, max_steps=4).fit(module)
    assert guard.num_skipped == 2 and not list(tmp_path.rglob("*.ckpt"))


def test_no_checkpoint_is_written_with_nan_weights(tmp_path):
    module = NaNAtSecondStep(bad=99)
    trainer = tiny_trainer(NonFiniteGuard(), tmp_path, max_steps=1)
    trainer.fit(module)
    with torch.no_grad():
        module.layer.bias.fill_(float("inf"))
    with pytest.raises(ConfigError, match=r"NaN/inf weights in 1 tensor\(s\) \(e.g. layer.bias\)"):
        trainer.save_checkpoint(tmp_path / "nan.ckpt")
    assert not (tmp_path / "nan.ckpt").exists()


def test_resuming_a_checkpoint_with_nan_weights_is_refused(tmp_path):
    module = NaNAtSecondStep(bad=99)
    trainer = pl.Trainer(max_steps=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    trainer.fit(module)  # no guard: a checkpoint as a diverged run without one would have left it
    with torch.no_grad():
        module.layer.weight.fill_(float("nan"))
    trainer.save_checkpoint(tmp_path / "nan.ckpt")
    with pytest.raises(ConfigError, match=r"nan.ckpt' has NaN/inf weights"):
        tiny_trainer(NonFiniteGuard(), tmp_path, max_steps=2).fit(module, ckpt_path=tmp_path / "nan.ckpt")


def test_guard_arguments_are_checked():
    with pytest.raises(ConfigError, match=r"nonfinite.action='ignore' is unknown"):
        NonFiniteGuard(action="ignore")
    with pytest.raises(ConfigError, match=r"nonfinite.max_skips=0"):
        NonFiniteGuard(max_skips=0)


def test_sampling_refuses_a_checkpoint_with_nan_weights(debug_tokenizer, tmp_path, load_script, capsys):
    args = ["fit", "--config", "configs/debug/ar.yaml", f"--model.init_args.tokenizer={debug_tokenizer}"]
    mmar_main([*args, "--trainer.max_steps=1", f"--trainer.default_root_dir={tmp_path}", *QUIET])
    saved = torch.load(next(tmp_path.rglob("*.ckpt")), map_location="cpu", weights_only=True)
    name = next(k for k, v in saved["state_dict"].items() if k.startswith("trunk.") and v.is_floating_point())
    saved["state_dict"][name].view(-1)[0] = float("nan")  # what a diverged run without the guard left
    torch.save(saved, tmp_path / "diverged.ckpt")
    with pytest.raises(ConfigError, match=f"diverged.ckpt' has NaN/inf weights in 1 tensor.*{name}"):
        load_generator(tmp_path / "diverged.ckpt")
    sample = load_script("sample")
    with pytest.raises(SystemExit) as exit_info:
        sample.main([f"--ckpt={tmp_path / 'diverged.ckpt'}", f"--out={tmp_path / 'out'}", "--device=cpu"])
    assert exit_info.value.code == 2 and "NaN/inf weights" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
