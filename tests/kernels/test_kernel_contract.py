"""Only `mmar.kernels` calls the ops it owns: attention, token draws and vocabulary cross-entropy."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWNED = re.compile(r"scaled_dot_product_attention|torch\.multinomial|\.multinomial\(|F\.cross_entropy\(")
# the embedded digits, moving-digits and notes metrics train small classifiers: class losses, not
# vocabulary ones
ALLOWED = {
    "mmar/eval/audio.py": {"F.cross_entropy("},
    "mmar/eval/embedded.py": {"F.cross_entropy("},
    "mmar/eval/video.py": {"F.cross_entropy("},
    "scripts/bench_kernels.py": {"scaled_dot_product_attention", "F.cross_entropy("},  # the baselines
    "mmar/units/masked_ar.py": {"torch.multinomial"},  # draws a schedule step, not a token
    "mmar/units/speculative.py": {"torch.multinomial"},  # draws from SJD's residual probabilities, not logits
}


def test_nothing_outside_kernels_calls_the_ops_directly():
    offenders = []
    for folder in ("mmar", "tokenizers_visual", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            for hit in OWNED.findall(path.read_text()):
                if hit not in ALLOWED.get(rel, set()):
                    offenders.append(f"{rel}: {hit}")
    assert not offenders, f"call mmar.kernels instead: {offenders}"
