"""Property test: random and mutated config values, unknown keys and wrong types, given on the command line
or written into a copy of a debug recipe's YAML, end in one `error: ...` line (a ConfigError or a
jsonargparse usage error), never a traceback.

The recipes are built, not trained (`main(run=False)`): model, data and trainer are constructed, so
construction-time checks are covered; each example costs a fraction of a second."""

import contextlib
import inspect
import io
import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmar.cli import main as mmar_main
from mmar.data import DigitsDataModule, MovingDigitsDataModule
from mmar.lit import GeneratorModule, TokenizerModule
from mmar.lit.nonfinite import NonFiniteGuard

# recipe -> (model class, data class); ar.yaml gets the debug tokenizer fixture's folder
RECIPES = {
    "configs/debug/vq.yaml": (TokenizerModule, DigitsDataModule),
    "configs/debug/ar.yaml": (GeneratorModule, DigitsDataModule),
    "configs/debug/video.yaml": (TokenizerModule, MovingDigitsDataModule),
}
TRAINER_KEYS = [
    "max_steps", "max_epochs", "accumulate_grad_batches", "gradient_clip_val", "val_check_interval",
    "check_val_every_n_epoch", "limit_train_batches", "limit_val_batches", "log_every_n_steps", "precision",
    "devices", "accelerator", "num_sanity_val_steps",
]  # fmt: skip
KEPT = {"tokenizer", "export_dir", "text_tokenizer", "root", "train_root", "val_root"}  # paths: other tests

values = st.one_of(
    st.integers(-3, 70),
    st.sampled_from([-1.0, 0.0, 0.5, 1.0, 1.5, 1e6, math.nan, math.inf, -math.inf]),
    st.sampled_from(["", "nope", "cosine", "1e-3", "[1, 2]", "{bogus: 1}", "null", "true"]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(-2, 9), max_size=3),
    st.dictionaries(st.sampled_from(["bogus", "n_layer", "name", "d_model"]), st.integers(-2, 9), max_size=2),
)


def init_args(cls) -> list[str]:
    return [name for name in inspect.signature(cls.__init__).parameters if name not in {"self", *KEPT}]


@st.composite
def arguments(draw) -> tuple[str, list[tuple[str, object]], bool]:
    """A recipe, 1-3 (dotted key, value) pairs: a known key (model, data, trainer, nonfinite), an unknown
    one or a whole section, set to a random value of any type; and whether they go into the YAML."""
    recipe = draw(st.sampled_from(sorted(RECIPES)))
    model, data = RECIPES[recipe]
    keys = st.one_of(
        st.sampled_from(init_args(model)).map(lambda k: f"model.init_args.{k}"),
        st.sampled_from(init_args(data)).map(lambda k: f"data.init_args.{k}"),
        st.sampled_from(TRAINER_KEYS).map(lambda k: f"trainer.{k}"),
        st.sampled_from(init_args(NonFiniteGuard)).map(lambda k: f"nonfinite.{k}"),
        st.sampled_from(["model.init_args.bogus", "data.init_args.lr", "trainer.bogus", "bogus", "data"]),
    )
    edits = [(key, draw(values)) for key in draw(st.lists(keys, min_size=1, max_size=3, unique=True))]
    return recipe, edits, draw(st.booleans())


def as_cli(edits) -> list[str]:
    return [f"--{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in edits]


def edited_recipe(recipe: str, edits, folder) -> str:
    """A copy of `recipe` with each dotted key set to its value (sections created as needed)."""
    config = yaml.safe_load(Path(recipe).read_text())
    for key, value in edits:
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # a section the edits replaced by a value, or a new one
            node = node[part]
        node[leaf] = value
    path = folder / f"edited_{abs(hash(repr((recipe, edits))))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("random_arguments")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=arguments())
def test_random_arguments_end_in_one_error_line(drawn, debug_tokenizer, root):
    recipe, edits, in_yaml = drawn
    args = [] if in_yaml else as_cli(edits)
    recipe = edited_recipe(recipe, edits, root) if in_yaml else recipe
    cli = ["--config", recipe, f"--trainer.default_root_dir={root}", "--trainer.logger=false", *args]
    if drawn[0].endswith("ar.yaml"):
        cli.insert(2, f"--model.init_args.tokenizer={debug_tokenizer}")  # before args: they may replace it
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            mmar_main(cli, run=False)  # anything but SystemExit(2) is a traceback for the user
            return
        except SystemExit as exit_info:
            code = exit_info.code
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and any(line.startswith("error: ") for line in lines), (args, lines[-3:])
    assert not any(line.startswith("Traceback") for line in lines), (args, lines)
