"""Audio clips: an embedded dataset of synthesised notes, and folders of real audio files.

`EmbeddedNotesDataset` needs no download: each clip is one synthesised note, a pure function of `(seed,
split, index)`, labelled with its pitch class (`PITCH_CLASSES`). Notes vary in octave (MIDI 48-83),
timbre (`TIMBRES`: band-limited harmonic series whose strongest partial is always the fundamental, so
the label is audible and checkable), envelope, onset and amplitude. Train and val clips differ (the split
is mixed into the seed); `held_out_combos=True` also keeps the (octave, timbre) pairs of `held_out` out
of training, a small compositional test (every octave and timbre still occurs in training).

`AudioFolderDataset` reads real audio with soundfile: root/<class>/<files>, a flat folder, or a .jsonl
manifest. Files are probed once (`soundfile.info`); unreadable ones and ones shorter than `duration`
(unless `pad_short`) are skipped and counted with one warning, and a file that fails later gives None,
which `collate_skip_none` drops. One clip per file: a random crop in training, the centre crop
otherwise; only the crop (plus a margin for the soxr "HQ" resampler) is decoded. Channels are mixed
before resampling (cheaper). Loudness: RMS set to `target_dbfs`, then scaled down (not clipped, which
would distort) if the peak exceeds 1, so very peaky clips end up below the target. The train/val split
is a stable hash per file (`mmar.data.text.split_fraction`), so no file changes side when others are
added.

Items: {"audio": float32 [C, N] in [-1, 1], "label": long} (+ "caption"; + "midi", "timbre" for notes).
"""

from __future__ import annotations

import json
import logging
import math
import os
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from torch.utils.data import Dataset

from mmar.data.base import FolderDataModule, SplitDataModule
from mmar.data.image_folder import collate_skip_none
from mmar.data.text import split_fraction
from mmar.errors import ConfigError

log = logging.getLogger(__name__)

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
TIMBRES = ("sine wave", "sawtooth", "square wave", "plucked string")
LOWEST_MIDI, NUM_OCTAVES = 48, 3
SPLITS = {"train": 0, "val": 1, "test": 2}
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
LAYOUT_HINT = (
    "expected root/<class_name>/<audio files>, a flat folder of audio files, or a .jsonl manifest of "
    f'{{"path": ..., "label": ..., "caption": ...}} lines; extensions {list(AUDIO_EXTENSIONS)}'
)
_UNREADABLE = (sf.SoundFileError, RuntimeError, OSError, ValueError)
_WARN_NAMES = 5


def midi_frequency(midi: int) -> float:
    """Equal-tempered frequency in Hz of a MIDI note (A4 = 69 = 440 Hz)."""
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def caption(pitch_class: int, timbre: int) -> str:
    """A note in words: "a C# note played by a plucked string"."""
    name = PITCH_CLASSES[pitch_class]
    return f"{'an' if name[0] in 'AEF' else 'a'} {name} note played by a {TIMBRES[timbre]}"


def held_out(octave: int, timbre: int) -> bool:
    """The 3 of 12 (octave, timbre) pairs that `held_out_combos` keeps for val: one timbre per octave."""
    return (octave + timbre) % 4 == 3


def _check_audio_args(sample_rate: int, duration: float, channels: int = 1) -> None:
    if sample_rate <= 0:
        raise ConfigError(f"sample_rate={sample_rate} must be > 0 (Hz), e.g. 16000")
    if duration <= 0:
        raise ConfigError(f"duration={duration} must be > 0 seconds, e.g. 1.0")
    if channels not in (1, 2):
        raise ConfigError(f"channels={channels} is not supported; use 1 (mono) or 2 (stereo)")


class EmbeddedNotesDataset(Dataset):
    """Synthesised notes; item i is {"audio": [1, N], "label": pitch class, "midi", "timbre", "caption"}.

    A note: MIDI 48-83 (131-988 Hz); a sine, a sawtooth (partials 1/k), a square wave (odd partials 1/k)
    or a plucked string (partials 1/k, higher ones dying faster); a 5 ms attack with an exponential decay
    or an ADSR envelope; an onset in the first 0.1 s (at most a fifth of the clip); peak 0.2-0.9.

    Args:
        num_clips: the dataset's length.
        sample_rate: samples per second.
        duration: clip length in seconds (N = round(duration * sample_rate)).
        seed: seed of the clip generator.
        split: "train", "val" or "test"; mixed into the per-item seed (test is held out like val).
        held_out_combos: draw only the `held_out` (octave, timbre) pairs in val and none of them in train.
    """

    def __init__(
        self,
        num_clips: int,
        sample_rate: int = 16000,
        duration: float = 0.5,
        seed: int = 0,
        split: str = "train",
        held_out_combos: bool = False,
    ):
        _check_audio_args(sample_rate, duration)
        if split not in SPLITS:
            raise ConfigError(f"split='{split}' must be one of {tuple(SPLITS)}")
        if num_clips < 0:
            raise ConfigError(f"num_clips={num_clips} must be >= 0")
        self.num_clips, self.sample_rate, self.seed, self.split = num_clips, sample_rate, seed, split
        self.num_samples = max(1, round(duration * sample_rate))
        self.combos = [
            (o, t)
            for o in range(NUM_OCTAVES)
            for t in range(len(TIMBRES))
            if not held_out_combos or held_out(o, t) == (split != "train")
        ]

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip {index} out of range for {self.num_clips} clips")
        rng = np.random.default_rng((self.seed, SPLITS[self.split], index))
        octave, timbre = self.combos[rng.integers(len(self.combos))]
        pitch = int(rng.integers(12))
        midi = LOWEST_MIDI + 12 * octave + pitch
        audio = self._render(midi_frequency(midi), timbre, rng)
        return {
            "audio": torch.from_numpy(audio.astype(np.float32))[None],
            "label": torch.tensor(pitch, dtype=torch.long),
            "midi": torch.tensor(midi, dtype=torch.long),
            "timbre": torch.tensor(timbre, dtype=torch.long),
            "caption": caption(pitch, timbre),
        }

    def _render(self, freq: float, timbre: int, rng: np.random.Generator) -> np.ndarray:
        """float64 [N]: band-limited partials k * freq (below 0.45 * sample_rate) times an envelope."""
        sr, n = self.sample_rate, self.num_samples
        onset = rng.uniform(0.0, min(0.1, 0.2 * n / sr))
        t = np.arange(n) / sr - onset  # time since onset, < 0 before it
        k = np.arange(1, max(1, int(0.45 * sr / freq)) + 1)[:, None]  # [K, 1]
        amps = {0: (k == 1) * 1.0, 1: 1.0 / k, 2: (k % 2 == 1) / k, 3: 1.0 / k}[timbre]
        partials = amps * np.sin(2 * np.pi * freq * k * np.clip(t, 0, None))  # [K, N]
        if timbre == 3:  # a plucked string: partial k rings for tau / k ** 0.7 seconds
            partials *= np.exp(-np.clip(t, 0, None) * k**0.7 / rng.uniform(0.15, 0.5))
        tone = partials.sum(0)
        tone /= max(np.abs(tone).max(), 1e-12)
        if timbre == 3 or rng.random() < 0.5:  # 5 ms attack, exponential decay
            tau = rng.uniform(0.1, 0.6)
            env = np.interp(t, [0, 0.005], [0, 1]) * np.exp(-np.clip(t - 0.005, 0, None) / tau)
        else:  # ADSR, the release ending at the clip's end
            a, d, s, r = rng.uniform(0.005, 0.05), rng.uniform(0.05, 0.2), rng.uniform(0.4, 0.9), 0.05
            off = max(a + d, t[-1] - r)
            env = np.interp(t, [0, a, a + d, off, off + r], [0, 1, s, s, 0])
        return rng.uniform(0.2, 0.9) * env * tone


class EmbeddedNotesDataModule(SplitDataModule):
    """Synthesised notes as a LightningDataModule (12 pitch-class labels); the test split is
    `num_clips_val` clips of a third random stream (with `held_out_combos`, of the held-out pairs like val).

    Args:
        sample_rate: samples per second.
        duration: clip length in seconds.
        batch_size: clips per batch.
        num_clips_train / num_clips_val: clips per split.
        seed: seed of the clips.
        held_out_combos: keep the `held_out` (octave, timbre) pairs for val only.
        num_workers: DataLoader worker processes.
    """

    num_classes = len(PITCH_CLASSES)

    def __init__(
        self,
        sample_rate: int = 16000,
        duration: float = 0.5,
        batch_size: int = 32,
        num_clips_train: int = 4096,
        num_clips_val: int = 256,
        seed: int = 0,
        held_out_combos: bool = False,
        num_workers: int = 0,
    ):
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        _check_audio_args(sample_rate, duration)
        if num_clips_train < 1:
            raise ConfigError(f"num_clips_train={num_clips_train} must be >= 1")
        self.sample_rate, self.duration, self.seed = sample_rate, duration, seed
        self.num_clips = {"train": num_clips_train, "val": num_clips_val}
        self.held_out_combos = held_out_combos

    @property
    def audio_shape(self) -> tuple[int, int]:
        """(C, N) of every clip."""
        return (1, max(1, round(self.duration * self.sample_rate)))

    def embedded_metrics(self, condition: str):
        """Class-conditional notes: the pitch classifier's accuracy and FD against held-out clips."""
        if condition != "label":
            return None
        from mmar.eval.audio import NotesMetrics
        from mmar.eval.sample_metrics import ClassMetrics

        build = partial(NotesMetrics, self.sample_rate, self.duration, self.seed)  # built on first use
        return ClassMetrics(self.num_classes, build, "audio")

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        args = (self.sample_rate, self.duration, self.seed)
        self.train_dataset = EmbeddedNotesDataset(
            self.num_clips["train"], *args, "train", self.held_out_combos
        )
        self.val_dataset = EmbeddedNotesDataset(self.num_clips["val"], *args, "val", self.held_out_combos)
        self.test_dataset = EmbeddedNotesDataset(self.num_clips["val"], *args, "test", self.held_out_combos)


def rms_dbfs(audio: np.ndarray) -> float:
    """RMS level of a clip in dB relative to full scale (a full-scale sine is -3 dBFS)."""
    return 20 * math.log10(max(float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))), 1e-10))


def normalize_loudness(audio: np.ndarray, target_dbfs: float | None) -> np.ndarray:
    """`audio` with its RMS at `target_dbfs` (silence left alone), scaled down if its peak exceeds 1."""
    if target_dbfs is not None and rms_dbfs(audio) > -100:
        audio = audio * 10 ** ((target_dbfs - rms_dbfs(audio)) / 20)
    peak = float(np.abs(audio).max(initial=0.0))
    return audio / peak if peak > 1 else audio


def find_audio(root: Path) -> tuple[list[str], list[tuple]]:
    """(class names, [(path, split key, label, None)]): sub-folders are classes (searched recursively;
    files directly in `root` are then ignored), else `root` is one flat class."""
    if not root.is_dir():
        raise ConfigError(f"audio folder '{root}' does not exist; {LAYOUT_HINT}")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    folders = [root / c for c in classes] if classes else [root]
    samples, empty, others = [], [], set()
    for label, folder in enumerate(folders):
        files = sorted(
            Path(d, f) for d, _, fs in os.walk(folder, followlinks=True) for f in fs if not f.startswith(".")
        )
        audio = [f for f in files if f.suffix.lower() in AUDIO_EXTENSIONS and (classes or f.parent == root)]
        others.update(f.suffix.lower() or f.name for f in files if f.suffix.lower() not in AUDIO_EXTENSIONS)
        empty += [folder.name] if not audio else []
        samples += [(str(f), f.relative_to(root).as_posix(), label, None) for f in audio]
    if empty:
        what = f"class folders without audio files: {empty[:10]}" if classes else "no audio files"
        seen = f" (other extensions seen: {sorted(others)[:10]})" if others else ""
        raise ConfigError(f"'{root}' has {what}{seen}; add audio files or remove them; {LAYOUT_HINT}")
    return classes or [root.resolve().name], samples


def read_manifest(path: Path) -> tuple[list[str], list[tuple]]:
    """(class names, [(path, split key, label, caption or None)]) of a .jsonl manifest."""
    if not path.is_file():
        raise ConfigError(f"manifest '{path}' does not exist; {LAYOUT_HINT}")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not (isinstance(row, dict) and isinstance(row.get("path"), str)):
            raise ConfigError(
                f"manifest '{path}' line {i} is not a JSON object with a \"path\" string: {line[:80]!r}; "
                f"{LAYOUT_HINT}"
            )
        rows.append(row)
    if not rows:
        raise ConfigError(f"manifest '{path}' lists no files; {LAYOUT_HINT}")
    for field in ("label", "caption"):
        if 0 < sum(field in r for r in rows) < len(rows):
            raise ConfigError(f"manifest '{path}': give \"{field}\" on every line or on none")
    labels = [r.get("label", 0) for r in rows]
    if all(isinstance(x, str) for x in labels):
        classes = sorted(set(labels))
        ids = {name: i for i, name in enumerate(classes)}
        labels = [ids[x] for x in labels]
    elif all(isinstance(x, int) and x >= 0 for x in labels):
        classes = [str(c) for c in range(max(labels) + 1)] if "label" in rows[0] else [path.stem]
    else:
        raise ConfigError(f"manifest '{path}': labels must be all class names or all ids >= 0")
    keys = [Path(r["path"]).as_posix() for r in rows]
    return classes, [
        (str(path.parent / k), k, y, r.get("caption")) for r, k, y in zip(rows, keys, labels, strict=True)
    ]


class AudioFolderDataset(Dataset):
    """One clip per probed file of a folder or manifest: {"audio": [C, N] in [-1, 1], "label": long}.

    Args:
        root: class sub-folders of audio files, or a flat folder (exactly one of root / manifest).
        manifest: a .jsonl file of {"path", "label"?, "caption"?} lines; relative paths resolve against
            its folder, labels are ids or class names (sorted), any format soundfile reads is accepted.
        sample_rate: output samples per second (soxr HQ resampling).
        duration: clip length in seconds (N = round(duration * sample_rate)).
        channels: 1 (average of all channels) or 2 (mono duplicated; of more channels the first two,
            front left/right in WAV order, since a downmix of surround layouts needs their layout).
        split: "all" files, or the "train" / "val" side of the by-file hash split.
        val_fraction: fraction of files (by hash) on the val side.
        seed: mixed into the split hash.
        random_crop: a random crop per read (training) instead of the centre crop.
        target_dbfs: RMS loudness target (None: no normalisation, only the peak limit).
        pad_short: zero-pad files shorter than `duration` at the end instead of skipping them.
        strict: raise ConfigError on an unreadable or too-short file instead of skipping it.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        manifest: str | os.PathLike | None = None,
        sample_rate: int = 16000,
        duration: float = 1.0,
        channels: int = 1,
        split: str = "all",
        val_fraction: float = 0.0,
        seed: int = 0,
        random_crop: bool = False,
        target_dbfs: float | None = -20.0,
        pad_short: bool = False,
        strict: bool = False,
    ):
        _check_folder_args(root, manifest, sample_rate, duration, channels, split, val_fraction, target_dbfs)
        self.source = Path(root if manifest is None else manifest)
        self.sample_rate, self.channels, self.split, self.strict = sample_rate, channels, split, strict
        self.num_samples = max(1, round(duration * sample_rate))
        self.random_crop, self.target_dbfs, self.pad_short = random_crop, target_dbfs, pad_short
        self.skipped_paths: dict[str, str] = {}  # path -> why
        find = find_audio if manifest is None else read_manifest
        self.classes, samples = find(self.source)
        self.has_captions = samples[0][3] is not None
        if split != "all":
            samples = [s for s in samples if (split_fraction(s[1], seed) < val_fraction) == (split == "val")]
        self.files: list[tuple] = []  # (path, frames, source rate, label, caption)
        self._probe(samples)

    @property
    def num_skipped(self) -> int:
        """Distinct files skipped so far (probe and read time, in this process)."""
        return len(self.skipped_paths)

    def _source_frames(self, rate: int) -> int:
        """Source frames a clip needs at source rate `rate`."""
        return math.ceil(self.num_samples * rate / self.sample_rate)

    def _check(self, path: str) -> tuple[int, int, str | None]:
        """(frames, sample rate, None), or (0, 0, why the file is skipped)."""
        try:
            info = sf.info(path)
        except _UNREADABLE as err:
            return 0, 0, f"unreadable, {type(err).__name__}: {err}"
        if info.frames < self._source_frames(info.samplerate) and not self.pad_short:
            return 0, 0, f"too short: {info.duration:.3f} s < {self.num_samples / self.sample_rate} s"
        return info.frames, info.samplerate, None

    def _probe(self, samples: list[tuple]) -> None:
        skipped = []
        for path, key, label, text in samples:
            frames, rate, why = self._check(path)
            if why is not None and self.strict:
                raise ConfigError(f"audio file '{path}' is {why}; remove it, or set strict=False to skip it")
            if why is not None:
                skipped.append((path, key, why))
            else:
                self.files.append((path, frames, rate, label, text))
        self.skipped_paths.update((path, why) for path, _, why in skipped)
        if skipped:
            names = "; ".join(f"{key} ({why})" for _, key, why in skipped[:_WARN_NAMES])
            more = f"; and {len(skipped) - _WARN_NAMES} more" if len(skipped) > _WARN_NAMES else ""
            log.warning("skipping %d of %d audio file(s) in '%s' (%s split): %s%s",
                        len(skipped), len(samples), self.source, self.split, names, more)  # fmt: skip
        if not self.files and self.split != "val":
            raise ConfigError(
                f"no usable audio files in '{self.source}' ({self.split} split): {len(samples)} found, "
                f"{len(skipped)} unreadable or shorter than {self.num_samples / self.sample_rate} s "
                "(pad_short=True keeps short ones)"
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict | None:
        path, frames, rate, label, text = self.files[index]
        try:
            audio = self._read(path, frames, rate)
        except _UNREADABLE as err:
            if self.strict:
                raise ConfigError(f"unreadable audio file '{path}' ({err}); remove or replace it") from err
            if path not in self.skipped_paths:
                self.skipped_paths[path] = f"unreadable: {err}"
                log.warning("skipping unreadable audio file '%s' (%s)", path, err)
            return None
        item = {"audio": torch.from_numpy(audio), "label": torch.tensor(label, dtype=torch.long)}
        return {**item, "caption": text} if self.has_captions else item

    def _read(self, path: str, frames: int, rate: int) -> np.ndarray:
        """float32 [C, N]: crop (plus a resampling margin), mix channels, resample, fit, normalise."""
        need = self._source_frames(rate)
        room = max(frames - need, 0)
        start = int(torch.randint(room + 1, ())) if self.random_crop else room // 2
        # a margin against the resampler's edge effects, a whole number of output samples long so that
        # the crop still starts exactly at source frame `start`; none for unusual rate pairs
        step = rate // math.gcd(rate, self.sample_rate)
        margin = 0 if rate == self.sample_rate or step > rate // 10 else step * math.ceil(0.01 * rate / step)
        lo, hi = start - min(start, margin) // step * step, min(start + need + margin, frames)
        x = sf.read(path, start=lo, stop=hi, dtype="float32", always_2d=True)[0]  # [frames, ch]
        if self.channels == 1:
            x = x.mean(axis=1, keepdims=True)
        else:
            x = np.repeat(x, 2, axis=1) if x.shape[1] == 1 else x[:, :2]
        if rate != self.sample_rate:
            x = soxr.resample(np.ascontiguousarray(x), rate, self.sample_rate, quality="HQ")
        offset = (start - lo) * self.sample_rate // rate
        x = x[offset : offset + self.num_samples].T  # [C, <= N]
        x = np.pad(x, ((0, 0), (0, self.num_samples - x.shape[1])))
        return np.ascontiguousarray(normalize_loudness(x, self.target_dbfs), dtype=np.float32)


def _check_folder_args(root, manifest, sample_rate, duration, channels, split, val_fraction, target_dbfs):
    _check_audio_args(sample_rate, duration, channels)
    if (root is None) == (manifest is None):
        raise ConfigError(f"give exactly one of root (a folder) and manifest (a .jsonl file); {LAYOUT_HINT}")
    if split not in ("all", "train", "val"):
        raise ConfigError(f"split='{split}' must be one of ('all', 'train', 'val')")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction} must be in [0, 1)")
    if target_dbfs is not None and target_dbfs > 0:
        raise ConfigError(f"target_dbfs={target_dbfs} must be <= 0 (dB below full scale, e.g. -20) or null")


class AudioFolderDataModule(FolderDataModule):
    """A folder or manifest of audio files with a by-file train/val split (test split = val split).

    Batches: {"audio": float32 [B, C, N] in [-1, 1], "label": long [B]} (+ "caption": list[str] from a
    manifest); batches whose every file was unreadable arrive as None. Files are read in `setup`.

    Args:
        root / manifest: exactly one: a folder (class sub-folders or flat) or a .jsonl manifest.
        sample_rate, duration, channels, target_dbfs, pad_short, strict: as `AudioFolderDataset`.
        batch_size: clips per batch.
        val_fraction: fraction of files held out for validation (0: none).
        seed: mixed into the split hash.
        num_workers: DataLoader worker processes.
    """

    collate_fn = staticmethod(collate_skip_none)

    def __init__(
        self,
        root: str | None = None,
        manifest: str | None = None,
        sample_rate: int = 16000,
        duration: float = 1.0,
        channels: int = 1,
        batch_size: int = 16,
        val_fraction: float = 0.05,
        seed: int = 0,
        target_dbfs: float | None = -20.0,
        pad_short: bool = False,
        num_workers: int = 0,
        strict: bool = False,
    ):
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        _check_folder_args(
            root, manifest, sample_rate, duration, channels, "train", val_fraction, target_dbfs
        )
        self.common = {k: v for k, v in self.hparams.items() if k not in ("batch_size", "num_workers")}
        self.val_fraction = val_fraction

    @property
    def audio_shape(self) -> tuple[int, int]:
        """(C, N) of every clip."""
        return (self.common["channels"], max(1, round(self.common["duration"] * self.common["sample_rate"])))

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        train = AudioFolderDataset(split="train", random_crop=True, **self.common)
        if self.val_fraction > 0:
            self.val_dataset = AudioFolderDataset(split="val", **self.common)
        self.train_dataset = train
