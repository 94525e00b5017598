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
        ({"sched": "none", "sched_on_updates": True}, "sched_on_updates"),
        ({"decay_rate": 0}, "decay_rate"),
        ({"min_lr": 1.0}, "min_lr"),
        ({"warmup_lr": -1e-3}, "warmup_lr"),
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


# ------------------------------------------------------------------ one schema: fields carry help, types convert values
def test_every_field_has_help_and_every_annotation_converts_a_recipe_string():
    import dataclasses

    from robustproto.config import CertifyConfig, EvalConfig

    for schema in (TrainConfig, EvalConfig, CertifyConfig):
        for f in dataclasses.fields(schema):
            assert f.metadata.get("help", "").strip(), (schema.__name__, f.name)
            assert "default" not in f.metadata["help"].lower(), (schema.__name__, f.name)  # defaults are generated
    cfg = resolve_config({"download": "yes", "epochs": "3", "lr": "0.5", "embed_dim": "8", "mean": "0.5,1/4",
                          "std": [1, "0.5"], "backbone_opt": "depth=2,act='relu'", "reg": "lipschitz:weight=2",
                          "output": "runs/x"})
    assert cfg.download is True and cfg.epochs == 3 and cfg.lr == 0.5 and cfg.embed_dim == 8
    assert cfg.mean == (0.5, 0.25) and cfg.std == (1.0, 0.5)
    assert cfg.backbone_opt == {"depth": 2, "act": "relu"} and cfg.reg == (("lipschitz", {"weight": 2}),)


def test_option_tables_are_read_only_and_to_dict_is_plain_json(recipe):
    import json
    import types

    cfg = resolve_config(load_recipe(recipe), {"backbone_opt": ["depth=2"]})
    for table in (cfg.backbone_opt, cfg.head_opt, cfg.reg[0][1], cfg.eval):
        assert isinstance(table, types.MappingProxyType)
        with pytest.raises(TypeError):
            table["weight"] = 1.0
    plain = cfg.to_dict()
    assert json.loads(json.dumps(plain)) == plain  # what a run folder stores, and --resume reads back
    assert all(type(plain[k]) is dict for k in ("backbone_opt", "head_opt", "eval"))
    assert resolve_config(json.loads(cfg.to_json())) == cfg


def test_recipe_resolves_train_eval_and_certify_flags_over_recipe_over_defaults(tmp_path):
    from robustproto.config import CertifyConfig, EvalConfig, Recipe

    path = tmp_path / "r.toml"
    path.write_text('epochs = 2\noutput = "runs/r"\n[eval]\nattack = ["fgsm"]\neps = [0.1, "8/255"]\nn_samples = 50\n'
                    '[eval.L2]\nattack = ["deepfool"]\nthreshold = 2.0\n[eval.certify]\nn-samples = 7\nradii = [0.5]\n')
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe) and recipe.output == "runs/r"
    assert recipe.train_config({"lr": 0.1}).epochs == 2 and recipe.train_config({"epochs": 4}).epochs == 4
    assert recipe.train_config(base={"epochs": 9, "seed": 3}).seed == 3  # e.g. a run to resume, under the recipe
    assert recipe.eval_config() == EvalConfig(attacks={"L2": ["deepfool"]}, eps={"L2": []}, norm="Linf",
                                              thresholds={"L2": 2.0, "Linf": 0.3}, n_samples=50)
    cli = recipe.eval_config(attack=["pgd"], eps=["0.2"], n_samples=5, threshold="Linf=0.1")
    assert dict(cli.attacks) == {"Linf": ("pgd",)} and cli.eps["Linf"] == (0.2,) and cli.n_samples == 5
    assert cli.thresholds == {"L2": 2.0, "Linf": 0.1}
    assert recipe.certify_config() == CertifyConfig(n_samples=7, radii=(0.5,))
    assert recipe.certify_config(radii="1,2", batch_size=3) == CertifyConfig(n_samples=7, radii=(1, 2), batch_size=3)
    assert CertifyConfig.resolve(None) == CertifyConfig() and Recipe().certify_config() == CertifyConfig()


@pytest.mark.parametrize(
    "toml, call, key",
    [
        ("[eval]\natack = ['fgsm']\n", "eval", "atack"),
        ("[eval.L2]\nepz = [1]\n", "eval", "epz"),
        ("[eval]\nattack = 'fgsm'\nn_samples = 0\n", "eval", "n_samples"),
        ("[eval]\nattack = 'fgsm'\nbatch_size = 'big'\n", "eval", "batch_size"),
        ("[eval]\nattack = 'fgsm'\neps = [-0.1]\n", "eval", "eps"),
        ("[eval]\nattack = 'fgsm'\nthreshold = 'L3=1'\n", "eval", "threshold"),
        ("[eval]\nattack = 'fgsm'\nnorm = 'L1'\n", "eval", "norm"),
        ("[eval.certify]\nnorm = 'Linf'\n", "certify", "norm"),
        ("[eval.certify]\nradius = [1]\n", "certify", "radius"),
        ("[eval.certify]\nradii = [-1]\n", "certify", "radii"),
        ("[eval.certify]\nn_samples = -2\n", "certify", "n_samples"),
        ("eval = 3\n", "load", "eval"),
        ("[eval]\ncertify = 3\n", "load", "eval.certify"),
        ("epochz = 3\n", "load", "epochz"),
    ],
)
def test_bad_eval_and_certify_tables_are_usage_errors_naming_the_key(tmp_path, toml, call, key):
    from robustproto.errors import UsageError

    path = tmp_path / "r.toml"
    path.write_text(toml)
    with pytest.raises(UsageError) as err:
        recipe = load_recipe(path)
        recipe.eval_config() if call == "eval" else recipe.certify_config()
    assert key in str(err.value) and "\n" not in str(err.value)


def test_errors_are_usage_errors_that_old_except_value_error_still_catches(tmp_path):
    from robustproto.errors import MissingFileError, RobustProtoError, UsageError

    with pytest.raises(UsageError) as err:
        resolve_config({"epochs": "ten"})
    assert isinstance(err.value, (ValueError, RobustProtoError))
    with pytest.raises(MissingFileError):
        load_recipe(tmp_path / "nope.toml")
    path = tmp_path / "broken.toml"
    path.write_text("epochs = = 3\n")
    with pytest.raises(UsageError) as err:
        load_recipe(path)
    assert err.value.__cause__ is not None  # the TOML parser's error is kept as the cause
