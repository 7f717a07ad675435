"""ADM-protocol image metrics: the Inception pipeline against torch-fidelity's own computation (randomly
initialised weights through the local-path route), IS and precision/recall against hand computations,
reference statistics round trips, and the errors for missing weights."""

import json
import math
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mmar.errors import ConfigError
from mmar.eval.fid import (
    extract_features,
    image_batches,
    image_metrics,
    inception_score,
    load_reference,
    precision_recall,
    reference_from_features,
    save_reference,
    to_uint8,
)
from mmar.eval.inception import InceptionFeatures

torch_fidelity = pytest.importorskip("torch_fidelity")


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory) -> str:
    """torch-fidelity's Inception-v3 with random weights (He init, so features stay O(1)), saved as the
    plain state dict a downloaded file is."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    torch.manual_seed(0)
    with (
        mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None),
    ):
        net = tfi.FeatureExtractorInceptionV3("random", ["2048"])
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.05)
            nn.init.normal_(module.bias, std=0.05)
    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    torch.save(net.state_dict(), path)
    return str(path)


def image_folder(root, seed: int, n: int = 12, size: int = 24):
    """n RGB PNGs of smooth random blobs (different seeds give different distributions)."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * (0.5 + 0.1 * seed)
    images = to_uint8(nn.functional.interpolate(low, size=size, mode="bilinear") * 2 - 1)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / f"{i:03d}.png")
    return root


def test_fid_agrees_with_torch_fidelity_on_the_same_weights(random_inception, tmp_path):
    samples, reference = image_folder(tmp_path / "a", 0), image_folder(tmp_path / "b", 1)
    extractor = InceptionFeatures(random_inception)
    ref = load_reference(reference, extractor)
    assert set(ref) == {"mu", "sigma", "mu_s", "sigma_s", "pool"}
    total, batches = image_batches(samples, batch_size=5)
    features = extract_features(extractor, batches, total)
    # FID and precision/recall (sFID is the same Fréchet distance on other features: tested below)
    metrics = image_metrics(features, {k: ref[k] for k in ("mu", "sigma", "pool")})
    theirs = torch_fidelity.calculate_metrics(
        input1=str(samples),
        input2=str(reference),
        fid=True,
        feature_extractor_weights_path=random_inception,
        cuda=False,
        cache=False,
        verbose=False,
        batch_size=6,
        save_cpu_ram=True,  # no worker processes
    )
    assert metrics["fid"] > 1.0  # the two sets differ
    assert metrics["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-3)
    assert set(metrics) == {"fid", "inception_score", "precision", "recall"}


def test_features_of_a_batch_do_not_depend_on_the_batch(random_inception):
    extractor = InceptionFeatures(random_inception)
    images = torch.randint(0, 256, (3, 3, 20, 20), dtype=torch.uint8)
    whole = extractor(images)
    assert whole["pool"].shape == (3, 2048) and whole["logits"].shape == (3, 1008)
    assert whole["spatial"].shape == (3, 7 * 17 * 17)  # ADM's sFID features: 2023
    one = extractor(images[1:2])
    for name in whole:
        torch.testing.assert_close(one[name][0], whole[name][1], rtol=1e-4, atol=1e-4)
    grey = extractor(images[:, :1])
    torch.testing.assert_close(grey["pool"], extractor(images[:, :1].expand(-1, 3, -1, -1))["pool"])


def test_inception_score_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0], [-2.0, 0.0, 4.0]])
    p = logits.double().softmax(1)

    def by_hand(rows):
        marginal = p[rows].mean(0)
        return math.exp(sum((p[i] * (p[i] / marginal).log()).sum().item() for i in rows) / len(rows))

    assert inception_score(logits) == pytest.approx(by_hand([0, 1, 2, 3]), rel=1e-12)
    halves = (by_hand([0, 1]) + by_hand([2, 3])) / 2  # ADM: splits of split_size, averaged
    assert inception_score(logits, split_size=2) == pytest.approx(halves, rel=1e-12)
    assert inception_score(torch.zeros(5, 7)) == pytest.approx(1.0)  # uniform predictions: IS = 1
    one_hot = torch.eye(4) * 50
    assert inception_score(one_hot) == pytest.approx(4.0, rel=1e-6)  # confident and diverse: IS = K


def test_precision_recall_on_constructed_point_sets():
    grid = torch.stack(torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij"), -1).flatten(0, 1)
    # the 3rd neighbour of every grid point is at distance 1 (interior) or sqrt(2) (corner)
    assert precision_recall(grid, grid) == (1.0, 1.0)
    far = grid + 100.0
    assert precision_recall(grid, far) == (0.0, 0.0)
    half = torch.cat([grid[:10], far[:10]])  # half the samples on the reference manifold
    precision, recall = precision_recall(grid, half)
    assert precision == 0.5
    # the samples' 2 x 5 grid has radii 1 (edges) and sqrt(2) (corners): its rows and the next one
    assert recall == pytest.approx(15 / 25)
    with pytest.raises(ConfigError, match="more than k=3 points"):
        precision_recall(grid[:3], grid)


def test_reference_statistics_round_trip_and_adm_files(tmp_path):
    rng = np.random.default_rng(0)
    features = {"pool": rng.normal(size=(50, 6)), "spatial": rng.normal(size=(50, 4)), "logits": None}
    reference = reference_from_features(features)
    save_reference(tmp_path / "ref.npz", reference)
    loaded = load_reference(tmp_path / "ref.npz")
    assert set(loaded) == {"mu", "sigma", "mu_s", "sigma_s", "pool"}
    np.testing.assert_allclose(loaded["sigma"], np.cov(features["pool"], rowvar=False))
    adm = {"mu": reference["mu"], "sigma": reference["sigma"]}  # statistics only: FID, no PR, no sFID
    np.savez(tmp_path / "adm.npz", **adm)
    samples = {"pool": features["pool"], "spatial": features["spatial"], "logits": rng.normal(size=(50, 5))}
    metrics = image_metrics(samples, load_reference(tmp_path / "adm.npz"))
    assert set(metrics) == {"fid", "inception_score"} and abs(metrics["fid"]) < 1e-9
    shifted = {**samples, "spatial": samples["spatial"] + 1.0}  # sFID: the spatial means differ by 1
    metrics = image_metrics(shifted, loaded)
    assert set(metrics) == {"fid", "sfid", "inception_score", "precision", "recall"}
    assert metrics["sfid"] == pytest.approx(4.0) and metrics["precision"] == metrics["recall"] == 1.0


def test_npz_and_folder_inputs_and_their_errors(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 9, 9, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", arr_0=images)
    total, batches = image_batches(tmp_path / "samples.npz", batch_size=3)
    assert total == 7 and [len(b) for b in batches] == [3, 3, 1]
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.fromarray(images[0]).save(folder / "a.png")
    (folder / "broken.png").write_bytes(b"not a png")  # skipped and counted, not fatal
    total, batches = image_batches(folder)
    assert total == 2 and torch.equal(next(batches)[0], torch.from_numpy(images[0]).permute(2, 0, 1))
    np.savez(tmp_path / "floats.npz", arr_0=images.astype(np.float32))
    with pytest.raises(ConfigError, match="must be uint8"):
        image_batches(tmp_path / "floats.npz")
    with pytest.raises(ConfigError, match=r"neither a folder of images nor an \.npz"):
        image_batches(tmp_path / "missing")


def test_missing_weights_name_both_routes(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="--inception-weights"):
        InceptionFeatures(tmp_path / "missing.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError, match=r"could not download .* --inception-weights PATH, or put it at"):
        InceptionFeatures()
    not_a_state_dict = tmp_path / "model.pth"
    torch.save(nn.Linear(2, 2), not_a_state_dict)  # a pickled module: refused by weights_only loading
    with pytest.raises(ConfigError, match="weights_only=True"):
        InceptionFeatures(not_a_state_dict)


def test_eval_fid_script_writes_json_and_saves_the_reference(random_inception, tmp_path, load_script):
    script = load_script("eval_fid")
    reference = image_folder(tmp_path / "ref", 1)
    images = np.stack([np.asarray(Image.open(p)) for p in sorted(image_folder(tmp_path / "s", 0).iterdir())])
    np.savez(tmp_path / "samples.npz", images=images)  # as scripts/sample.py writes them
    args = ["--samples", str(tmp_path / "samples.npz"), "--ref", str(reference)]
    script.main([*args, "--save-ref", str(tmp_path / "ref.npz"), "--inception-weights", random_inception])
    metrics = json.loads((tmp_path / "fid.json").read_text())
    assert metrics["num_samples"] == 12 and metrics["num_reference"] == 12 and metrics["fid"] > 1.0
    assert {"sfid", "inception_score", "precision", "recall"} <= set(metrics)
    assert set(load_reference(tmp_path / "ref.npz")) == {"mu", "sigma", "mu_s", "sigma_s", "pool"}
