"""scripts/compare_speculative.py on the debug generator (64 tokens): passes per image of plain decoding,
exact SJD and LANTERN, their quality with standard errors, metrics.json and the marked docs table."""

import json

import pytest

FIELDS = {
    "decoding", "exact", "settings", "num_images", "batch_size", "tokens_per_image", "passes_per_batch",
    "passes_per_image", "passes_ratio", "seconds_per_image", "digits_class_accuracy",
    "digits_class_accuracy_se", "digits_classifier_fd", "digits_classifier_fd_se", "accuracy_difference",
    "accuracy_combined_se", "accuracy_within_se", "fd_difference", "fd_combined_se", "fd_within_se",
    "claim_met",
}  # fmt: skip


@pytest.mark.parametrize("batch_size", [1, 2])
def test_compare_speculative_counts_passes_and_writes_the_table(
    debug_generator, batch_size, tmp_path, load_script, capsys
):
    _, ckpt = debug_generator
    docs = tmp_path / "performance.md"
    docs.write_text(
        "# Performance\n\nbefore\n\n<!-- speculative:begin -->\nold\n<!-- speculative:end -->\n\nafter\n"
    )
    options = ["--ckpt", str(ckpt), "--per-class", "1", "--batch-size", str(batch_size), "--window", "8"]
    options += ["--lantern-k", "4", "--bootstrap", "5", "--device", "cpu"]
    load_script("compare_speculative").main([*options, "--out", str(tmp_path / "out"), "--docs", str(docs)])

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["decoding"] for r in lines] == ["plain", "sjd", "lantern"]
    plain, sjd, lantern = lines
    assert all(set(r) == FIELDS for r in lines)
    assert all(r["num_images"] == 10 and r["batch_size"] == batch_size for r in lines)
    assert plain["tokens_per_image"] == 64 and plain["passes_per_image"] == 64  # one pass per token
    assert plain["passes_ratio"] == 1 and plain["accuracy_within_se"] is None and plain["claim_met"] is None
    assert 1 <= sjd["passes_per_image"] <= plain["passes_per_image"]  # exact SJD: at least a token a pass
    assert sjd["passes_ratio"] == pytest.approx(plain["passes_per_image"] / sjd["passes_per_image"])
    assert sjd["exact"] and not lantern["exact"] and isinstance(sjd["claim_met"], bool)
    for r in lines:
        p = r["digits_class_accuracy"]
        assert 0 <= p <= 1 and r["digits_class_accuracy_se"] == pytest.approx((p * (1 - p) / 10) ** 0.5)
        assert r["digits_classifier_fd"] > 0 and r["digits_classifier_fd_se"] > 0
    for r in (sjd, lantern):
        assert r["accuracy_difference"] == pytest.approx(
            r["digits_class_accuracy"] - plain["digits_class_accuracy"]
        )
        combined = (r["digits_classifier_fd_se"] ** 2 + plain["digits_classifier_fd_se"] ** 2) ** 0.5
        assert r["fd_combined_se"] == pytest.approx(combined)
        assert r["fd_within_se"] == (abs(r["fd_difference"]) <= combined)

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["decodings"] == lines and metrics["num_images"] == 10
    assert metrics["sampler"]["cfg_scale"] == 3.0 and metrics["sampler"]["temperature"] == 1.0
    assert metrics["claim"]["met"] == sjd["claim_met"]
    text = docs.read_text()
    assert text.startswith("# Performance\n\nbefore\n") and text.endswith(
        "<!-- speculative:end -->\n\nafter\n"
    )
    table = text.split("<!-- speculative:begin -->")[1].split("<!-- speculative:end -->")[0]
    assert "old" not in table and "| plain (one token per pass) | yes | 64.0 | 1.00x |" in table
    assert (
        "| sjd (window 8) | yes |" in table
        and "| lantern (window 8, k 4, delta 0.1) | no (relaxed) |" in table
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--window", "0"], "invalid speculative settings"),
        (["--bootstrap", "1"], "--bootstrap must be >= 2"),
        (["--batch-size", "0"], "must be >= 1"),
    ],
)
def test_bad_options_are_one_line_errors_before_the_checkpoint_loads(
    options, message, tmp_path, load_script, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        load_script("compare_speculative").main(["--ckpt", str(tmp_path / "missing.ckpt"), *options])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_missing_checkpoint_and_units_without_speculative_decoding_are_one_line_errors(
    debug_generator, tmp_path, load_script, capsys, monkeypatch
):
    script = load_script("compare_speculative")
    with pytest.raises(SystemExit):
        script.main(["--ckpt", str(tmp_path / "missing.ckpt")])
    assert capsys.readouterr().err.startswith("error: checkpoint not found")
    model, ckpt = debug_generator
    monkeypatch.setattr(model.unit, "supports_speculative", False)
    monkeypatch.setattr(script, "load_generator", lambda *_: model)
    with pytest.raises(SystemExit):
        script.main(["--ckpt", str(ckpt)])
    err = capsys.readouterr().err
    assert err.startswith("error: the next_token unit of") and "has no speculative decoding" in err
