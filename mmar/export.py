"""`mmar export`: a trained model as a self-contained folder that loads without the training run.

The folder is the Hugging Face Hub layout (`ExportedModel` is a `huggingface_hub.ModelHubMixin`, so
`push_to_hub` and `from_pretrained(repo_id)` work):

    config.json          {"mmar_module": "GeneratorModule", "init_args": {...}}: the constructor arguments
    model.safetensors    the weights (the EMA weights when the run averaged them: Lightning's
                         EMAWeightAveraging puts them in the checkpoint's state_dict)
    tokenizer/           the frozen image/video/audio tokenizer (its own config.json + model.safetensors)
    text_tokenizer/      tokenizer.json of a StreamModule's BPE tokenizer
    README.md            the Hub model card

A TokenizerModule checkpoint (any of them, e.g. mid-run) exports as the tokenizer's own folder, which a
generator's `tokenizer` argument takes directly. Paths inside `init_args` are relative to the folder, so it
can be moved, copied or uploaded. Checkpoints are read weights-only; the tokenizers are rebuilt from the
configs the modules store in their checkpoints (`tokenizer_config`, `text_tokenizer_json`), so exporting
needs neither the training folders nor the data.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelHubMixin, snapshot_download
from lightning.pytorch import LightningModule
from safetensors.torch import save_file

from mmar.checkpoint_io import read_checkpoint
from mmar.errors import ConfigError
from mmar.io import atomic_dir, atomic_write, read_json, read_safetensors, require_fields, write_json
from mmar.lit.generator_module import GeneratorModule
from mmar.lit.stream_module import StreamModule
from mmar.text_tokenizer import FILE_NAME as TEXT_TOKENIZER_FILE
from mmar.text_tokenizer import TextTokenizer
from mmar.tokenizer import (
    CONFIG_NAME,
    EXPORTED_TOKENIZER_DIR,
    TRAINED_SIZE_KEY,
    WEIGHTS_NAME,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    read_tokenizer_config,
)

TEXT_TOKENIZER_DIR = "text_tokenizer"
MODULES: dict[str, type[LightningModule]] = {"GeneratorModule": GeneratorModule, "StreamModule": StreamModule}
"""Exportable LightningModules by the name config.json records."""
TOKENIZER_FIELDS = {"GeneratorModule": ("tokenizer",), "StreamModule": ("image_tokenizer",)}
"""init_args naming a tokenizer folder, which is also the module attribute holding the frozen tokenizer."""

Exportable = LightningModule | Tokenizer


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the model of a Lightning checkpoint as an exported folder at `out` (replaced atomically: a
    failed export leaves an existing folder as it was) and return its path; the folder is loaded back
    before it takes the place of `out`."""

    def write(tmp: Path) -> None:
        training = training_record(checkpoint)
        ExportedModel(module_from_checkpoint(checkpoint), training).save_pretrained(tmp)
        load_exported(tmp)  # never publish a folder that does not load

    atomic_dir(out, write)
    return Path(out)


def module_from_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu", text_tokenizer: str | None = None
) -> Exportable:
    """The model of a `.ckpt`, rebuilt without the training paths: a GeneratorModule or StreamModule in
    eval mode, or for a TokenizerModule checkpoint the Tokenizer it trains. `text_tokenizer` replaces a
    StreamModule's own (checked to be the same: vocabulary and digest)."""
    checkpoint = read_checkpoint(path, map_location=device)
    hparams, state = init_args_of(checkpoint.get("hyper_parameters", {})), checkpoint["state_dict"]
    kind = _module_name(hparams, path)
    with tempfile.TemporaryDirectory() as tmp:  # the tokenizers as folders, for the constructors
        if kind == "TokenizerModule":
            return _tokenizer_from(checkpoint, "tokenizer", hparams.get("tokenizer"), path).eval()
        if kind == "StreamModule":
            text = None if text_tokenizer else checkpoint.get("text_tokenizer_json")
            if text is None:  # given, or saved before checkpoints carried it: read from its path
                text = TextTokenizer.load(text_tokenizer or hparams["text_tokenizer"]).tokenizer.to_str()
            atomic_write(Path(tmp) / TEXT_TOKENIZER_FILE, lambda file: Path(file).write_text(text))
            hparams["text_tokenizer"] = str(Path(tmp) / TEXT_TOKENIZER_FILE)
        field = TOKENIZER_FIELDS[kind][0]
        if hparams.get(field) is not None:
            _tokenizer_from(checkpoint, field, hparams[field], path).save_pretrained(Path(tmp) / field)
            hparams[field] = str(Path(tmp) / field)
        module = MODULES[kind](**hparams)
    _load_weights(module, state, path)
    return module.to(device).eval()


def init_args_of(hparams: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments from saved hyper-parameters, without the entries LightningCLI adds
    (`_class_path`, `_instantiator`)."""
    return {k: v for k, v in hparams.items() if not k.startswith("_")}


def _module_name(hparams: dict[str, Any], path) -> str:
    """Which LightningModule wrote a checkpoint, from the hyper-parameters only it has."""
    if "text_tokenizer" in hparams:
        return "StreamModule"
    if "unit" in hparams:
        return "GeneratorModule"
    if "gan_weight" in hparams:
        return "TokenizerModule"
    raise ConfigError(
        f"checkpoint '{path}' is not from a GeneratorModule, StreamModule or TokenizerModule; mmar export "
        "takes the .ckpt of an `mmar fit` run"
    )


def _tokenizer_from(checkpoint: dict, prefix: str, configured, path) -> Tokenizer:
    """The tokenizer a checkpoint's state_dict holds under `prefix.`, built from the config the module saved
    (older checkpoints: from the folder or kwargs it was configured with)."""
    config = checkpoint.get("tokenizer_config")
    if config is None:
        config = read_tokenizer_config(configured) if isinstance(configured, str) else configured or {}
    config = dict(config)
    trained_image_size = config.pop(TRAINED_SIZE_KEY, None)
    tokenizer = build_tokenizer(config)
    weights = {
        k[len(prefix) + 1 :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix + ".")
    }
    _load_weights(tokenizer, weights, path)
    tokenizer.trained_image_size = trained_image_size
    return tokenizer


def _load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], path, skip: tuple = ()) -> None:
    """`module.load_state_dict(state)`; ConfigError naming the file when they do not fit (weights of `skip`
    submodules, loaded on their own, may be absent)."""
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(tuple(f"{name}." for name in skip))]
    if missing or result.unexpected_keys:
        names = (missing or result.unexpected_keys)[:3]
        what = "lacks" if missing else "has unknown"
        raise ConfigError(f"'{path}' {what} weights {names} for this model; it was saved by another version")


def training_record(source: str | os.PathLike) -> dict[str, Any]:
    """How a model was trained, from its checkpoint or exported folder: {"global_step", "datamodule"} (the
    DataModule's hyper-parameters, e.g. for scripts that rebuild the validation split); {} when unknown."""
    if Path(source).is_dir():
        return read_json(Path(source) / CONFIG_NAME).get("training", {})
    checkpoint = read_checkpoint(source, mmap=True)
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    data = {k: v for k, v in data.items() if not k.startswith("_")}  # not LightningCLI's own keys
    record = {"global_step": checkpoint.get("global_step"), "datamodule": data}
    return json.loads(json.dumps(record, default=str))  # JSON-safe: paths and the like as strings


def save_exported(module: Exportable, folder: str | os.PathLike, training: dict | None = None) -> None:
    """Write `module` (GeneratorModule, StreamModule or Tokenizer) into `folder` in the export layout, with
    the `training_record` it came from when given."""
    folder = Path(folder)
    if isinstance(module, Tokenizer):
        module.save_pretrained(folder)
        return
    kind = type(module).__name__
    if kind not in MODULES:
        raise ConfigError(f"cannot export a {kind}; exportable: {sorted(MODULES)} and tokenizers")
    init_args = init_args_of(module.hparams)
    skipped = []
    for field in TOKENIZER_FIELDS[kind]:
        tokenizer = getattr(module, field)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder / EXPORTED_TOKENIZER_DIR)
            init_args[field] = EXPORTED_TOKENIZER_DIR
            skipped.append(f"{field}.")
    if kind == "StreamModule":
        module.text_tokenizer.save(folder / TEXT_TOKENIZER_DIR)
        init_args["text_tokenizer"] = TEXT_TOKENIZER_DIR
    # clone: tied weights share storage, which safetensors refuses; loading fills both again
    state = {
        k: v.detach().cpu().clone().contiguous()
        for k, v in module.state_dict().items()
        if not k.startswith(tuple(skipped))
    }
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(state, tmp))
    config = {"mmar_module": kind, "init_args": init_args, **({"training": training} if training else {})}
    atomic_write(folder / CONFIG_NAME, lambda tmp: write_json(tmp, config))


def exported_kind(folder: str | os.PathLike) -> str:
    """ "GeneratorModule", "StreamModule" or "Tokenizer": what an exported folder holds."""
    config_file = Path(folder) / CONFIG_NAME
    config = read_json(config_file)
    if "mmar_module" not in config and "name" in config:
        return "Tokenizer"
    require_fields(config, ("mmar_module", "init_args"), config_file)
    if config["mmar_module"] not in MODULES:
        raise ConfigError(
            f"'{config_file}': unknown mmar_module {config['mmar_module']!r}; known {sorted(MODULES)}"
        )
    return config["mmar_module"]


def load_exported(
    folder: str | os.PathLike, device: str | torch.device = "cpu", text_tokenizer: str | None = None
) -> Exportable:
    """The model of an exported folder, in eval mode; ConfigError naming the file that is missing a field,
    corrupt or truncated. `text_tokenizer` replaces a StreamModule's own (checked to be the same)."""
    folder = Path(folder)
    kind = exported_kind(folder)
    if kind == "Tokenizer":
        return load_tokenizer(folder, map_location=device)
    config_file = folder / CONFIG_NAME
    init_args = dict(read_json(config_file)["init_args"])
    cls = MODULES[kind]
    required = [
        name
        for name, param in inspect.signature(cls).parameters.items()
        if param.default is inspect.Parameter.empty and param.kind == param.POSITIONAL_OR_KEYWORD
    ]
    require_fields(init_args, tuple(f"{name}" for name in required), f"{config_file} (init_args)")
    unknown = sorted(set(init_args) - set(inspect.signature(cls).parameters))
    if unknown:
        raise ConfigError(
            f"'{config_file}' init_args has unknown fields {unknown}; export with this mmar version"
        )
    for field in (*TOKENIZER_FIELDS[kind], "text_tokenizer"):  # relative to the folder
        if isinstance(init_args.get(field), str):
            init_args[field] = str(folder / init_args[field])
    if text_tokenizer and kind == "StreamModule":
        init_args["text_tokenizer"] = text_tokenizer
    module = cls(**init_args)
    weights = read_safetensors(folder / WEIGHTS_NAME, device)
    _load_weights(module, weights, folder / WEIGHTS_NAME, skip=TOKENIZER_FIELDS[kind])
    return module.to(device).eval()


MODEL_CARD = """---
{{ card_data }}
---

An mmar model written by `mmar export` (config.json + model.safetensors, tokenizers in their own folders).
Load it with `mmar.lit.loading.load_generator(folder)` (generators), `load_stream(folder)` (text and unified
models), `mmar.tokenizer.load_tokenizer(folder)` (tokenizers), or from the Hub with
`mmar.export.ExportedModel.from_pretrained(repo_id).module`; every mmar sampling script takes the folder as
`--ckpt`.
"""


class ExportedModel(ModelHubMixin, library_name="mmar", tags=["mmar"], model_card_template=MODEL_CARD):
    """An mmar model as a Hugging Face Hub folder.

    `ExportedModel(module).save_pretrained(dir)` or `.push_to_hub(repo_id)` writes the export layout;
    `ExportedModel.from_pretrained(dir_or_repo_id).module` loads it back (GeneratorModule, StreamModule or
    Tokenizer).
    """

    def __init__(self, module: Exportable, training: dict | None = None):
        self.module, self.training = module, training

    def _save_pretrained(self, save_directory: Path) -> None:
        save_exported(self.module, save_directory, self.training)

    @classmethod
    def _from_pretrained(
        cls, *, model_id: str, revision, cache_dir, force_download, local_files_only, token, **kw
    ):
        folder = model_id
        if not Path(model_id).is_dir():
            folder = snapshot_download(
                repo_id=model_id,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                local_files_only=local_files_only,
                token=token,
            )
        return cls(load_exported(folder, kw.get("map_location", "cpu")))
