"""TrainConfig: recipe → CLI precedence, one-line errors naming the key, option parsing."""

from __future__ import annotations

import pytest

from robustproto.config import TrainConfig, load_recipe, parse_reg, resolve_config

RECIPE = """
backbone = "test_resnet"
head = "glvq"
batch-size = 32
lr = 0.01
reg = ["lipschitz:weight=10,sigma=0.1"]
head_opt = {prototypes_per_class = 2}

[eval]
attacks = ["fgsm", "pgd"]
eps = [0.1, 0.2]
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    return path


def test_cli_overrides_recipe_which_overrides_defaults(recipe):
    cfg = resolve_config(load_recipe(recipe), {"lr": 0.5, "epochs": None, "head_opt": ["prototypes_per_class=3"]})
    assert cfg.lr == 0.5  # CLI wins
    assert cfg.batch_size == 32 and cfg.backbone == "test_resnet"  # recipe wins over defaults (hyphen key read)
    assert cfg.epochs == TrainConfig().epochs  # an option not given (None) keeps the recipe/default
    assert cfg.head_opt == {"prototypes_per_class": 3}
    assert cfg.reg == (("lipschitz", {"weight": 10, "sigma": 0.1}),)


def test_eval_table_is_kept_for_the_eval_command(recipe):
    cfg = resolve_config(load_recipe(recipe))
    assert cfg.eval == {"attacks": ["fgsm", "pgd"], "eps": [0.1, 0.2]}


def test_config_is_frozen_and_round_trips_through_json():
    cfg = resolve_config({"reg": ["probe:weight=0.5", "other"], "mean": "0.5", "std": "0.25"})
    with pytest.raises(Exception):
        cfg.lr = 1.0
    again = resolve_config(cfg.to_dict())
    assert again == cfg
    assert again.mean == (0.5,) and again.reg == (("probe", {"weight": 0.5}), ("other", {}))


@pytest.mark.parametrize(
    "layer, key",
    [
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"epochs": "ten"}, "epochs"),
        ({"epochs": 0}, "epochs"),
        ({"lr": "fast"}, "lr"),
        ({"dataset": "imagenet"}, "dataset"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"sched": "plateau"}, "sched"),
        ({"head_opt": ["no_equals_sign"]}, "head_opt"),
        ({"batch_size": True}, "batch_size"),
        ({"lr": float("inf")}, "lr"),
        ({"lr": "nan"}, "lr"),
        ({"weight_decay": 1e400}, "weight_decay"),
        ({"epochs": 3, "warmup_epochs": 3}, "warmup_epochs"),
        ({"sched": "none", "warmup_epochs": 1}, "warmup_epochs"),
        ({"mean": "nan", "std": "1"}, "mean"),
        ({"mean": "0", "std": "inf"}, "std"),
    ],
)
def test_bad_keys_and_values_are_one_line_errors_naming_the_key(layer, key):
    with pytest.raises(ValueError) as err:
        resolve_config(layer)
    message = str(err.value)
    assert key in message and "\n" not in message


def test_unknown_recipe_key_is_rejected(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("epochz = 3\n")
    with pytest.raises(ValueError, match="epochz"):
        resolve_config(load_recipe(path))


def test_missing_recipe_and_broken_toml_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="^config: recipe not found"):
        load_recipe(tmp_path / "nope.toml")
    path = tmp_path / "broken.toml"
    path.write_text("epochs = = 3\n")
    with pytest.raises(ValueError, match="^config: .* is not valid TOML"):
        load_recipe(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff")  # e.g. a weights file passed by mistake
    with pytest.raises(ValueError, match="^config: .* is not UTF-8"):
        load_recipe(path)


def test_a_warm_up_shorter_than_the_run_is_accepted():
    assert resolve_config({"epochs": 3, "warmup_epochs": 2}).warmup_epochs == 2


def test_reg_spec_parsing():
    assert parse_reg("none") is None
    assert parse_reg("lipschitz") == ("lipschitz", {})
    assert parse_reg("cross-lipschitz:mode=exact,samples=4") == ("cross-lipschitz", {"mode": "exact", "samples": 4})
    assert parse_reg("spectral-norm:weight=1e-3,layers=[1, 2],squared=True") == (
        "spectral-norm", {"weight": 1e-3, "layers": [1, 2], "squared": True})
    assert resolve_config({"reg": ["none"]}).reg == ()
    with pytest.raises(ValueError, match="reg"):
        parse_reg(":weight=1")
