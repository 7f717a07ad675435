"""Text-to-image sampling from a generator checkpoint trained with a text condition (any prediction unit),
or from a unified text + image model (`StreamModule`).

    python scripts/sample_t2i.py --ckpt runs/t2i/next_token/checkpoints/last.ckpt \
        --prompt "a red circle on the left" --prompt "two blue squares in the middle" \
        --per-prompt 8 --cfg-scale 3 --score --out runs/t2i/samples
    python scripts/sample_t2i.py --ckpt runs/t2i/ar_B/checkpoints/last.ckpt --prompts prompts.txt \
        --per-prompt 4 --cfg-scale 7.5 --cfg-schedule linear --top-k 1000 --out runs/t2i/ar_B/samples

Prompts: the compositional benchmark's prompts of a split (--benchmark held_out|seen, scored on their
GenEval-style tasks with --score), or every --prompt (in order), then the lines of --prompts FILE: a
.jsonl/.ndjson file holds one JSON object a line with the text under "prompt" (or "caption" / "text");
any other file one prompt a line. Blank lines are skipped; leading and trailing whitespace is stripped.

Seeds: the N = prompts x --per-prompt images are ordered prompt by prompt (image k = i * per_prompt + j
is image j of prompt i) and cut into batches of --batch-size; batch b is sampled with seed `--seed + b`,
so image k gets seed `--seed + k // batch_size` (listed per image in metrics.json). A batch draws its noise
together, so an image is reproduced by the same prompts, --per-prompt, --batch-size, --seed and sampler
options; a different --batch-size gives different (equally valid) samples.

Writes to --out:
- `images/{prompt_index:04d}_{j:02d}.png`: every image (PNGs of that pattern left by an earlier run into the
  same folder are removed);
- `grid.png`: one row per prompt (the first --grid-prompts prompts, the first --grid-columns images of
  each), the prompt written above its row, images enlarged by nearest neighbour (--grid-scale);
- `samples.npz`: `images` uint8 [N, H, W, C] (rounded, ADM convention), `prompt_index` [N], `prompts`;
- `metrics.json`: checkpoint, prompts, per-image prompt index and seed, sampler settings, timing, and with
  --score the GenEval-style compositional scores of `mmar.eval.compositional.score_captions` (prompts must
  then follow the shapes caption grammar of `mmar.data.shapes`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from mmar.errors import ConfigError, run_or_exit
from mmar.eval.fid import to_uint8
from mmar.io import atomic_write, write_json, write_npz, write_outputs
from mmar.lit.loading import is_stream_checkpoint, load_generator, load_stream
from mmar.sampling import add_sampler_arguments, sampler_from_arguments

JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSONL_KEYS = ("prompt", "caption", "text")
IMAGE_NAME = re.compile(r"^\d{4,}_\d{2,}\.png$")
GRID_MIN_CELL = 96  # pixels: --grid-scale 0 enlarges images to at least this side
GRID_MIN_WIDTH = 320  # pixels: room for the prompt text of a narrow row
GRID_PAD = 4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ckpt",
        required=True,
        help="text-conditional generator checkpoint (.ckpt) or exported folder (mmar export)",
    )
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", help="file of prompts: .txt one a line, .jsonl one {'prompt': ...} a line")
    p.add_argument(
        "--benchmark", choices=["held_out", "seen"], help="the compositional benchmark's prompts of a split"
    )
    p.add_argument("--per-prompt", type=int, default=4, help="images per prompt")
    p.add_argument("--batch-size", type=int, default=64, help="images per generate call")
    p.add_argument("--seed", type=int, default=0, help="batch b uses seed + b (see the seed rule above)")
    add_sampler_arguments(p)
    p.add_argument("--score", action="store_true", help="compositional scores (shapes captions only)")
    p.add_argument("--grid-columns", type=int, default=8, help="images per prompt shown in grid.png")
    p.add_argument("--grid-prompts", type=int, default=64, help="prompts (rows) shown in grid.png")
    p.add_argument("--grid-scale", type=int, default=0, help="nearest-neighbour enlargement (0: auto)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="runs/t2i/samples", help="output folder")
    return p.parse_args(argv)


def check_prompt(prompt, where: str) -> str:
    """The stripped prompt, or a ConfigError naming `where` it came from."""
    if not isinstance(prompt, str):
        raise ConfigError(f"{where}: the prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ConfigError(f"{where}: empty prompt; every prompt needs some text")
    return prompt.strip()


def read_prompt_file(path: str) -> list[str]:
    """Prompts of a .txt (one a line) or .jsonl file (one object a line), blank lines skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"cannot read --prompts file '{path}': {reason}") from err
    jsonl = Path(path).suffix.lower() in JSONL_SUFFIXES
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"--prompts {path} line {number}"
        if not jsonl:
            prompts.append(line.strip())
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f'{where} is not valid JSON ({err.msg}); expected {{"prompt": "..."}}') from err
        key = next((k for k in JSONL_KEYS if isinstance(record, dict) and k in record), None)
        if key is None:
            raise ConfigError(f'{where} has no {" / ".join(JSONL_KEYS)} key; expected {{"prompt": "..."}}')
        prompts.append(check_prompt(record[key], where))
    return prompts


def gather_prompts(args: argparse.Namespace, scored: list | None) -> list[str]:
    """The benchmark's prompts (`scored`), or the --prompt values then the --prompts file's, checked."""
    if scored is not None:
        if args.prompt or args.prompts:
            raise ConfigError("--benchmark brings its own prompts: drop --prompt / --prompts")
        return [prompt.caption for prompt in scored]
    prompts = [check_prompt(p, f"--prompt #{n}") for n, p in enumerate(args.prompt, start=1)]
    if args.prompts:
        prompts += read_prompt_file(args.prompts)
    if not prompts:
        raise ConfigError(
            "no prompts: pass --prompt TEXT (repeatable) and/or --prompts FILE (.txt or .jsonl)"
        )
    return prompts


def check_scorable(prompts: list[str]) -> None:
    """Every prompt parses in the shapes caption grammar, or a ConfigError naming the first that does not."""
    from mmar.data.shapes import parse_caption

    for prompt in prompts:
        try:
            parse_caption(prompt)
        except ConfigError as err:
            raise ConfigError(
                f"--score needs shapes captions (the grammar of mmar.data.shapes, e.g. 'two red circles on "
                f"the left and a blue square in the middle'), but prompt '{prompt}' is not one: {err}"
            ) from err


def save_png(path: Path, image: np.ndarray) -> None:
    """uint8 [H, W, C] -> PNG, atomically."""
    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def captioned_grid(images: np.ndarray, prompts: list[str], scale: int) -> Image.Image:
    """uint8 images [P, K, H, W, C] -> one RGB picture: per prompt, its text (wrapped) above its row of K
    images enlarged `scale` times by nearest neighbour."""
    columns, height, width = images.shape[1:4]
    cell_h, cell_w = height * scale, width * scale
    canvas_w = max(columns * (cell_w + GRID_PAD) + GRID_PAD, GRID_MIN_WIDTH)
    font = ImageFont.load_default()
    line_h = font.getbbox("Ag")[3] - font.getbbox("Ag")[1] + 2
    char_w = max(font.getbbox("x" * 20)[2] / 20, 1)
    wrapped = [textwrap.wrap(p, max(int((canvas_w - 2 * GRID_PAD) / char_w), 8)) or [""] for p in prompts]
    canvas_h = sum(len(lines) * line_h + cell_h + 3 * GRID_PAD for lines in wrapped) + GRID_PAD
    canvas = Image.new("RGB", (canvas_w, canvas_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = GRID_PAD
    for row, lines in zip(images, wrapped):
        for line in lines:
            draw.text((GRID_PAD, y), line, fill=(0, 0, 0), font=font)
            y += line_h
        y += GRID_PAD
        for k, image in enumerate(row):
            picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")
            canvas.paste(
                picture.resize((cell_w, cell_h), Image.NEAREST), (GRID_PAD + k * (cell_w + GRID_PAD), y)
            )
        y += cell_h + 2 * GRID_PAD
    return canvas


def json_safe(value):
    """NaN / inf -> None (strict JSON), recursively."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def load_text_to_image(ckpt: str, device: str):
    """(model, unit name, trunk passes per image) of a text-conditional generator or a unified model."""
    if is_stream_checkpoint(ckpt):
        model = load_stream(ckpt, device)
        if model.image_tokenizer is None:
            raise ConfigError(
                f"checkpoint '{ckpt}' is a text-only language model; sample it with scripts/sample_text.py"
            )
        return model, "unified (next_token)", model.image_steps
    model = load_generator(ckpt, device)
    if model.conditioning.batch_key != "caption":
        raise ConfigError(
            f"checkpoint '{ckpt}' is class-conditional ({type(model.conditioning).__name__}, it reads "
            f"'{model.conditioning.batch_key}'), not text-to-image; sample it with scripts/sample.py"
        )
    return model, model.hparams.get("unit"), model.unit.num_steps(model.grid)


def run(args: argparse.Namespace) -> dict:
    for name in ("per_prompt", "batch_size", "grid_columns", "grid_prompts"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    if args.grid_scale < 0:
        raise ConfigError(f"--grid-scale={args.grid_scale} must be >= 0 (0: automatic)")
    scored = None  # the benchmark's prompts with their tasks
    if args.benchmark:
        from mmar.eval.compositional import benchmark_prompts

        scored = benchmark_prompts(args.benchmark)
    prompts = gather_prompts(args, scored)
    if args.score:
        check_scorable(prompts)
    sampler = sampler_from_arguments(args)

    model, unit, passes = load_text_to_image(args.ckpt, args.device)
    if args.score and model.input_shape[0] != 3:
        raise ConfigError(f"--score needs RGB images (shapes data); this generator makes {model.input_shape}")

    prompt_index = torch.arange(len(prompts)).repeat_interleave(args.per_prompt)  # (N,) prompt by prompt
    seeds = [args.seed + k // args.batch_size for k in range(len(prompt_index))]
    images, start = [], time.perf_counter()
    for b, batch in enumerate(tqdm(prompt_index.split(args.batch_size), desc="sampling", unit="batch")):
        sampler.seed = args.seed + b
        images.append(
            model.generate([prompts[i] for i in batch.tolist()], sampler).float().clamp(-1, 1).cpu()
        )
    seconds = time.perf_counter() - start
    images = torch.cat(images)  # (N, C, H, W) in [-1, 1]
    uint8 = to_uint8(images).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)

    out = Path(args.out)
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    names = set()
    for k, (i, image) in enumerate(zip(prompt_index.tolist(), uint8)):
        name = f"{i:04d}_{k - i * args.per_prompt:02d}.png"
        save_png(folder / name, image)
        names.add(name)
    for stale in folder.iterdir():
        if IMAGE_NAME.match(stale.name) and stale.name not in names:
            stale.unlink()
    shown = uint8.reshape(len(prompts), args.per_prompt, *uint8.shape[1:])
    shown = shown[: args.grid_prompts, : args.grid_columns]
    scale = args.grid_scale or max(1, math.ceil(GRID_MIN_CELL / max(uint8.shape[1:3])))
    grid = captioned_grid(shown, prompts[: args.grid_prompts], scale)

    metrics = {
        "checkpoint": str(args.ckpt),
        "unit": unit,
        "text_encoder": getattr(getattr(model, "conditioning", None), "encoder_name", None),
        "num_prompts": len(prompts),
        "per_prompt": args.per_prompt,
        "num_images": len(images),
        "image_shape": list(images.shape[1:]),
        "prompts": prompts,
        "prompt_index": prompt_index.tolist(),
        "seeds": seeds,
        "seed_rule": "image k = prompt_index * per_prompt + j uses seed + k // batch_size (one seed a batch)",
        "batch_size": args.batch_size,
        "sampler": {**asdict(sampler), "seed": args.seed},
        "forward_passes_per_image": passes,
        "sampling_seconds": seconds,
        "images_per_second": len(images) / seconds,
    }
    if args.score:
        from mmar.eval.compositional import score_captions, score_images

        if scored is not None:  # each prompt on its own task(s)
            metrics["compositional"] = score_images(images, [scored[i] for i in prompt_index.tolist()])
        else:
            metrics["compositional"] = score_captions(images, [prompts[i] for i in prompt_index.tolist()])
        metrics["benchmark"] = args.benchmark
    metrics = json_safe(metrics)
    arrays = {"images": uint8, "prompt_index": prompt_index.numpy(), "prompts": np.array(prompts)}
    write_outputs(  # all three or none: earlier results stay until the new ones are complete
        out,
        {
            "grid.png": lambda tmp: grid.save(tmp, format="PNG"),
            "samples.npz": lambda tmp: write_npz(tmp, **arrays),
            "metrics.json": lambda tmp: write_json(tmp, metrics),
        },
    )
    return metrics


def main(argv=None) -> None:
    args = parse_args(argv)
    metrics = run_or_exit(run, args)
    hidden = ("sampler", "prompts", "prompt_index", "seeds")
    print(json.dumps({k: v for k, v in metrics.items() if k not in hidden}, indent=2))
    print(f"wrote {args.out}/images/, grid.png, samples.npz, metrics.json")


if __name__ == "__main__":
    main()
