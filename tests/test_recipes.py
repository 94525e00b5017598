"""The paper recipes in recipes/: each parses into a TrainConfig and trains for one step as written.

The smoke runs keep every model, head, regularizer and training setting of a recipe and shrink only
the data (the bundled MNIST subset, or a tiny fake CIFAR / Imagenette image folder), the epochs and the batch.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import robustproto
from robustproto.config import load_recipe, resolve_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))
PAPERS = {"saralajew": "Saralajew", "khalid": "Khalid & Paaßen", "serban": "Serban", "hein": "Hein & Andriushchenko",
          # issue 12, adversarial training: Madry's and Khalid & Paaßen's MNIST CNNs, Wong, Rice, Zhang on CIFAR-10,
          # robustness tuning of a pretrained timm model
          "madry": "Madry", "kp": "Khalid & Paaßen", "wong": "Wong", "rice": "Rice", "zhang": "Zhang",
          "finetune": "Madry",
          # issue 13, certified training against GloRo's numbers on GloRo's networks
          "gloro": "Leino, Wang & Fredrikson"}
# the issue's experiments: 6 + 8 + 2 + 4, issue 13's two scale-aware Khalid & Paaßen variants, its two CIFAR-10 GLVQ
# ones with detach_denominator and Khalid & Paaßen's four Imagenette-160 models; issue 12: {madry, kp} × {linear, glvq} × {pgd-at, trades, fgsm-rs},
# Wong, Rice, Zhang, the fine-tuning recipe and Serban's repulsive head with PGD-AT
EXPECTED = {"saralajew": 6, "khalid": 16, "serban": 3, "hein": 4,
            "madry": 6, "kp": 6, "wong": 1, "rice": 1, "zhang": 1, "finetune": 1, "gloro": 3}
ADVERSARIAL_TRAINING = ("pgd-at", "fgsm-rs", "trades")
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
    # the whole MNIST / CIFAR test set, as in the papers; the whole Imagenette-160 val split (3925 images)
    assert settings.n_samples == (3925 if "-imagenette-" in path.stem else 10000)
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
        extra = {"square"} if path.stem.endswith("-pgd-at") else set()  # issue 12's protocol beside the paper's
        assert set(settings.attacks["Linf"]) == {"pgd-20", "pgd-100", "autoattack"} | extra
        assert min(settings.eps["Linf"]) == 8 / 255 and max(settings.eps["Linf"]) == 16 / 255
    if paper == "hein":
        assert table["certify"] == {"norm": "L2", "n_samples": 10000}
        assert recipe.certify_config() == CertifyConfig(norm="L2", n_samples=10000)  # what `certify --config` runs
    if paper == "khalid":
        top = 6.0 if "-mnist-" in path.stem else 0.2  # ε ∈ [0.001, 0.2] for CIFAR-10 and Imagenette-160
        if "-imagenette-" in path.stem:  # Imagenette-160 read as an image folder at 160×160, batch size 64
            cfg = resolve_config(recipe)
            assert (cfg.dataset, cfg.img_size, cfg.batch_size, cfg.backbone) == ("imagefolder", 160, 64, "kp_cnn_cifar")
        # the paper's CE-FGSM beside FGSM on the scale-free margin
        assert settings.attacks == {"Linf": ("fgsm@ce", "fgsm@margin")} and settings.eps["Linf"][1] == 0.001
        assert max(settings.eps["Linf"]) == top
    if paper == "gloro":
        # certified accuracy at the paper's radius, and the minimal attacks whose distances bound every radius
        (name, opts), = resolve_config(recipe).reg
        assert name == "lipschitz-margin" and recipe.certify_config().norm == "L2"
        paper_radius = {"2c2f": 0.3, "4c3f": 1.58, "6c2f": 36 / 255}[path.stem.split("-")[2]]
        assert any(math.isclose(r, paper_radius, abs_tol=1e-4) for r in recipe.certify_config().radii)
        assert settings.attacks == {"L2": ("fab", "cw", "deepfool")}
    adversarial = [(name, opts) for name, opts in resolve_config(recipe).reg if name in ADVERSARIAL_TRAINING]
    if paper in ("madry", "kp", "wong", "rice", "zhang", "finetune"):
        assert len(adversarial) == 1, "an adversarial-training recipe trains with one of pgd-at, fgsm-rs, trades"
    if adversarial:
        # issue 12's protocol: PGD-20 (its default loss), standard AutoAttack and Square at the training ε and norm
        (name, opts), = adversarial
        reg = robustproto.create_regularizer(name, **opts)
        pgd = {"Linf": "pgd-20", "L2": "pgd-l2-20"}[reg.norm]
        assert {pgd, "autoattack", "square"} <= set(settings.attacks[reg.norm]), path.stem
        assert any(math.isclose(eps, reg.eps) for eps in settings.eps[reg.norm]), (path.stem, reg.eps)
        assert settings.attack_options == {}  # AutoAttack's 100 steps, Square's 5000 queries: the defaults
        assert settings.bisection_steps == 0
        assert ({"madry": 0.3, "kp": 0.3, "rice": 0.5}.get(paper, 8 / 255), reg.norm) == \
            (reg.eps, "L2" if paper == "rice" else "Linf")


def _fake_image_folder(root: Path, num_classes: int, test_split: str = "test") -> Path:
    """``root/train`` and ``root/<test_split>`` with one 32×32 RGB PNG per class and split: a stand-in for CIFAR
    (``test``) or Imagenette (``val``, its own layout)."""
    rng = np.random.default_rng(0)
    for split in ("train", test_split):
        for k in range(num_classes):
            folder = root / split / f"class{k:03d}"
            folder.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "0.png")
    return root


def _random_backbone_weights(backbone: str, path: Path) -> Path:
    """A randomly initialised timm backbone saved with safetensors: stands in for the pretrained weights a recipe
    names (no download)."""
    from safetensors.torch import save_file

    torch.manual_seed(123)
    save_file(timm.create_model(backbone, pretrained=False).state_dict(), str(path))
    return path


def _smoke_overrides(cfg: robustproto.TrainConfig, tmp_path: Path) -> dict:
    small = {"epochs": 1, "warmup_epochs": 0, "batch_size": STEP, "max_train_samples": STEP, "max_test_samples": STEP,
             "init_samples": STEP, "output": str(tmp_path / "run")}
    if cfg.pretrained_weights:  # a file the user supplies: random weights of the same architecture
        small["pretrained_weights"] = str(_random_backbone_weights(cfg.backbone, tmp_path / "weights.safetensors"))
    if cfg.img_size and cfg.img_size > 32:  # the fake images are 32×32: no upsampling (only the data shrinks)
        small["img_size"] = 32
    if cfg.dataset == "mnist":
        return {**small, "dataset": "mnist-small"}
    if cfg.dataset == "imagefolder":  # Imagenette-160: 10 classes, DIR/train and DIR/val
        folder = _fake_image_folder(tmp_path / "imagenette2-160", 10, test_split="val")
        return {**small, "data_dir": str(folder), "max_train_samples": None, "max_test_samples": None,
                "batch_size": 10}
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


def test_finetune_recipe_loads_local_weights_and_freezes_the_backbone(tmp_path):
    """``finetune-resnet18-pgd-at``: the backbone starts from the local safetensors file (here a randomly initialised
    resnet18, no download) and stays as loaded during the frozen first epoch while the head trains on PGD examples."""
    from safetensors.torch import load_file

    path = Path(__file__).resolve().parents[1] / "recipes" / "finetune-resnet18-pgd-at.toml"
    recipe = resolve_config(load_recipe(path))
    assert recipe.backbone == "resnet18" and recipe.pretrained_weights.endswith(".safetensors")
    assert 1 <= recipe.freeze_backbone_epochs < recipe.epochs and [n for n, _ in recipe.reg] == ["pgd-at"]
    cfg = recipe.replace(**_smoke_overrides(recipe, tmp_path))  # one epoch: the frozen one
    assert cfg.pretrained_weights == str(tmp_path / "weights.safetensors") and cfg.freeze_backbone_epochs == 1
    before = robustproto.wrap("resnet18", head="linear", num_classes=10)  # what the run builds before loading
    robustproto.train(cfg)
    saved = load_file(cfg.pretrained_weights)
    backbone = robustproto.load(cfg.output).backbone.state_dict()
    assert set(backbone) == {k for k in saved if not k.startswith("fc.")}
    for key, value in backbone.items():  # parameters and BatchNorm statistics as loaded: frozen, eval mode
        assert torch.equal(value, saved[key]), key
    assert not torch.equal(before.backbone.conv1.weight, saved["conv1.weight"])  # the file, not a fresh init
    (record,) = [json.loads(line) for line in (Path(cfg.output) / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(record["train_loss"]) and record["reg/pgd-at/eps"] == 8 / 255
