"""The paper recipes in recipes/: each parses into a TrainConfig and trains for one step as written.

The smoke runs keep every model, head, regularizer and training setting of a recipe and shrink only
the data (the bundled MNIST subset, or a tiny fake CIFAR image folder), the epochs and the batch.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import robustproto
from robustproto.config import load_recipe, resolve_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))
PAPERS = {"saralajew": "Saralajew", "khalid": "Khalid & Paaßen", "serban": "Serban", "hein": "Hein & Andriushchenko"}
# the issue's experiments: 6 + 8 + 2 + 4
EXPECTED = {"saralajew": 6, "khalid": 8, "serban": 2, "hein": 4}
STEP = 8  # samples per smoke run: one optimiser step of this batch size


def _id(path: Path) -> str:
    return path.stem


def test_every_experiment_of_the_four_papers_has_a_recipe():
    counts = {paper: sum(p.stem.startswith(paper + "-") for p in RECIPES) for paper in EXPECTED}
    assert counts == EXPECTED
    assert len(RECIPES) == sum(EXPECTED.values())


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_recipe_parses_and_documents_itself(path):
    cfg = resolve_config(load_recipe(path))
    assert cfg.output == f"runs/{path.stem}"
    assert cfg.eval, "a recipe carries its evaluation protocol in an [eval] table"
    header = path.read_text(encoding="utf8").split("\n\n")[0]
    assert all(line.startswith("#") for line in header.splitlines())
    assert PAPERS[path.stem.split("-")[0]] in header
    assert "Paper numbers" in header and "Deviations from the paper" in header
    assert re.search(rf"robustproto train +--config recipes/{re.escape(path.name)}", header)


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_recipe_eval_table_is_what_eval_and_certify_run(path):
    from robustproto.attacks import parse_attack
    from robustproto.config import CertifyConfig, EvalConfig

    recipe = load_recipe(path)
    table = resolve_config(recipe).eval
    settings = recipe.eval_config()  # what `robustproto eval --config` runs
    assert settings == EvalConfig.resolve(table)  # the [eval] table a run folder keeps says the same
    assert settings.n_samples == 10000  # the whole MNIST / CIFAR test set, as in the papers
    for norm, names in settings.attacks.items():
        for name in names:
            key, spec, _ = parse_attack(name, {})
            assert norm in spec.norms and (spec.minimal or settings.eps[norm]), (name, norm)
    paper = path.stem.split("-")[0]
    if paper == "saralajew":
        assert dict(settings.thresholds) == {"L2": 1.5, "Linf": 0.3}
        assert {"deepfool", "fgm", "pgd-l2", "fgsm", "bim", "mim"} <= {n for v in settings.attacks.values() for n in v}
        assert settings.bisection_steps > 0  # Table 1's median-δ of the fixed-budget attacks
    if paper == "serban":
        assert set(settings.attacks["Linf"]) == {"pgd-20", "pgd-100", "autoattack"}
        assert min(settings.eps["Linf"]) == 8 / 255 and max(settings.eps["Linf"]) == 16 / 255
    if paper == "hein":
        assert table["certify"] == {"norm": "L2", "n_samples": 10000}
        assert recipe.certify_config() == CertifyConfig(norm="L2", n_samples=10000)  # what `certify --config` runs
    if paper == "khalid":
        top = 6.0 if "-mnist-" in path.stem else 0.2
        # the paper's CE-FGSM beside FGSM on the scale-free margin
        assert settings.attacks == {"Linf": ("fgsm@ce", "fgsm@margin")} and settings.eps["Linf"][1] == 0.001
        assert max(settings.eps["Linf"]) == top


def _fake_image_folder(root: Path, num_classes: int) -> Path:
    """``root/train`` and ``root/test`` with one 32×32 RGB PNG per class and split: a stand-in for CIFAR."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k in range(num_classes):
            folder = root / split / f"class{k:03d}"
            folder.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "0.png")
    return root


def _smoke_overrides(cfg: robustproto.TrainConfig, tmp_path: Path) -> dict:
    small = {"epochs": 1, "warmup_epochs": 0, "batch_size": STEP, "max_train_samples": STEP, "max_test_samples": STEP,
             "init_samples": STEP, "output": str(tmp_path / "run")}
    if cfg.dataset == "mnist":
        return {**small, "dataset": "mnist-small"}
    classes = {"cifar10": 10, "cifar100": 100}[cfg.dataset]
    folder = _fake_image_folder(tmp_path / "images", classes)
    return {**small, "dataset": "imagefolder", "data_dir": str(folder), "max_train_samples": None,
            "max_test_samples": None, "batch_size": classes}


@pytest.mark.parametrize("path", RECIPES, ids=_id)
def test_recipe_trains_one_step(path, tmp_path):
    recipe = resolve_config(load_recipe(path))
    cfg = recipe.replace(**_smoke_overrides(recipe, tmp_path))
    result = robustproto.train(cfg)

    model = robustproto.load(cfg.output)
    spec = model.spec
    assert (spec["backbone"], spec["head"]) == (recipe.backbone, recipe.head)
    assert spec["head_options"] == dict(recipe.head_opt)
    assert spec["backbone_kwargs"] == {"in_chans": model.normalize.mean.numel(), **recipe.backbone_opt}
    if recipe.embed_dim is not None:
        assert model.embed_dim == recipe.embed_dim
    for name, value in model.state_dict().items():
        assert torch.equal(value, result.model.state_dict()[name].cpu()), name

    saved = json.loads((Path(cfg.output) / "config.json").read_text())
    assert saved["reg"] == recipe.to_dict()["reg"] and saved["eval"] == dict(recipe.eval)
    (record,) = [json.loads(line) for line in (Path(cfg.output) / "metrics.jsonl").read_text().splitlines()]
    assert record["epoch"] == 1 and math.isfinite(record["train_loss"])
    for name, _ in recipe.reg:
        assert math.isfinite(record[f"reg/{name}"])
