"""benchmarks/reproduce.py: what each scale runs for every recipe is a valid training config and eval protocol."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest

from robustproto.config import load_recipe, resolve_config
from robustproto.config import EvalConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "benchmarks" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setitem(sys.modules, "reproduce", module)  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    monkeypatch.undo()


@pytest.fixture
def data_dir(tmp_path):
    """A data folder that has every dataset the recipes name (CIFAR in torchvision's layout, so nothing unpacks)."""
    for name in ("MNIST", "cifar-10-batches-py", "cifar-100-python"):
        (tmp_path / name).mkdir()
    return tmp_path


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_full_scale_runs_the_recipe_as_written(reproduce, data_dir, tmp_path, path):
    recipe = resolve_config(load_recipe(path))
    cfg, changes, table = reproduce.plan_experiment(path, "full", data_dir, tmp_path / "runs")
    assert changes == {} and table == dict(recipe.eval)
    as_written = recipe.to_dict()
    differing = {k for k, v in cfg.to_dict().items() if as_written[k] != v}
    assert differing == {"data_dir", "output"}
    assert cfg.data_dir == str(data_dir) and cfg.output == str(tmp_path / "runs" / path.stem)


def test_small_scale_shrinks_every_recipe_into_a_valid_protocol(reproduce, data_dir, tmp_path):
    shared_table = copy.deepcopy(reproduce.SMALL)
    for path in RECIPES:
        recipe = resolve_config(load_recipe(path))
        cfg, changes, table = reproduce.plan_experiment(path, "small", data_dir, tmp_path / "runs")
        settings = EvalConfig.resolve(table)  # as `robustproto eval --config` would
        as_written = EvalConfig.resolve(recipe.eval)
        assert settings.n_samples < as_written.n_samples, path.stem
        assert cfg.epochs < recipe.epochs and cfg.max_train_samples, path.stem
        for key, value in changes.items():  # every change is applied, and listed in the report
            if not key.startswith("eval."):
                assert getattr(cfg, key) == value
        # which attacks run may change, never their strength (steps, restarts, queries)
        assert settings.attack_options == as_written.attack_options
    assert reproduce.SMALL == shared_table  # planning one recipe never changes another's


def test_reports_name_no_folder_of_the_machine(reproduce, tmp_path):
    runs = tmp_path / "runs"
    (runs / "hein-mnist-mlp-none").mkdir(parents=True)
    skipped = reproduce.plan_experiment(ROOT / "recipes" / "serban-cifar100-repulsive.toml", "small", tmp_path, runs)
    outcome = reproduce.Outcome("hein-mnist-mlp-none", "small",
                                {"output": str(reproduce.ROOT / "runs" / "x"), "data_dir": str(tmp_path)})
    args = type("Args", (), {"results": tmp_path / "results", "scale": "small", "data_dir": tmp_path})()
    md = reproduce.write_results([skipped, outcome], args)
    text = md.read_text() + (tmp_path / "results" / "reproduction_small.json").read_text()
    assert str(tmp_path) not in text and str(reproduce.ROOT) not in text
    assert "--data-dir" in text
