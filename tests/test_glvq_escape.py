"""benchmarks/glvq_escape.py: the first steps of the Khalid & Paaßen CIFAR-10 GLVQ recipe, measured."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def glvq_escape(load_benchmark):
    return load_benchmark("glvq_escape")


def test_embeddings_leave_the_prototypes_while_most_points_are_misclassified(glvq_escape, write_cifar10, tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 256), ("test", 40)):  # noise with random labels: nine in ten points misclassified
        write_cifar10(tmp_path, rng.integers(0, 256, (n, 3, 32, 32)), rng.integers(0, 10, n), split)
    results = tmp_path / "escape.json"
    argv = ["--data-dir", str(tmp_path), "--dataset", "", "--steps", "10", "--every", "5", "--train-samples", "256",
            "--points", "40", "--only", "rec*", "--results", str(results)]
    assert glvq_escape.main(argv) == 0
    (name, variant), = json.loads(results.read_text()).items()
    records = variant["records"]
    assert name == "recipe" and [r["step"] for r in records] == [0, 5, 10]
    assert records[0]["train_share_mu_positive"] is None and records[1]["train_share_mu_positive"] > 0.6
    assert records[2]["mean_embedding_norm"] > 3 * records[0]["prototype_norm"]  # moved away from every prototype
    assert records[2]["median_abs_mu"] < records[1]["median_abs_mu"] / 2  # into GLVQ's flat corner
    assert records[2]["prototype_norm"] == pytest.approx(records[0]["prototype_norm"], rel=0.05)


def test_an_unknown_variant_is_a_one_line_usage_error(glvq_escape, capsys, tmp_path):
    with pytest.raises(SystemExit):
        glvq_escape.main(["--only", "adagrad*", "--results", str(tmp_path / "escape.json")])
    assert "matches none of recipe, sgd" in capsys.readouterr().err
