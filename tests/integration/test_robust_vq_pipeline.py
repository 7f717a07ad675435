"""RobusTok's decoder post-training end to end on the debug models: a generator's teacher-forced tokens
paired with their images, then `TokenizerModule(trainable="decoder")` trains only the decoder on them."""

import torch

from mmar.cli import main as mmar_main
from mmar.data.token_cache import load_token_cache
from tokenizers_visual import load_tokenizer

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.logger=false"]


def test_pairs_then_decoder_post_training(debug_tokenizer, tmp_path, load_script):
    gen = ["fit", "--config", "configs/debug/ar.yaml", f"--model.init_args.tokenizer={debug_tokenizer}"]
    mmar_main([*gen, f"--trainer.default_root_dir={tmp_path / 'ar'}", *QUIET])
    ckpt = next((tmp_path / "ar").rglob("*.ckpt"))
    script = load_script("make_post_train_pairs")
    common = ["--ckpt", str(ckpt), "--split", "val", "--batch-size", "100", "--top-k", "5"]

    script.main([*common, "--sigma", "1.0", "--out", str(tmp_path / "teacher")])
    tensors, meta = load_token_cache(tmp_path / "teacher")
    tokenizer = load_tokenizer(debug_tokenizer)
    assert meta["num_items"] == len(tensors["images"]) == len(tensors["tokens"]) == 179
    assert torch.equal(tensors["tokens"], tokenizer.encode(tensors["images"]))  # sigma 1: all teacher
    assert meta["changed_token_fraction"] == 0

    pairs = tmp_path / "pairs"
    script.main([*common, "--sigma", "0.5", "--out", str(pairs)])
    tensors, meta = load_token_cache(pairs)
    assert 0.2 < meta["changed_token_fraction"] < 0.8 and meta["sigma"] == 0.5

    export = tmp_path / "post"
    post = ["fit", "--config", "configs/tokenizers/digits_robust_vq_post.yaml"]
    post += [f"--model.init_args.tokenizer={debug_tokenizer}", f"--data.init_args.path={pairs}"]
    post += [
        f"--model.init_args.export_dir={export}",
        "--trainer.max_steps=3",
        "--trainer.limit_val_batches=1",
    ]
    mmar_main([*post, f"--trainer.default_root_dir={tmp_path / 'post_run'}", *QUIET])
    before, after = tokenizer.state_dict(), load_tokenizer(export).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("decoder.") for k in changed)  # encoder and codebook frozen
