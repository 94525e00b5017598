"""Plugin discovery: third-party packages found through entry points, failures isolated, duplicates rejected.

The third-party packages here are real distributions (a ``*.dist-info`` folder with
``entry_points.txt``) put on ``sys.path``, which is exactly what ``pip install`` leaves behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import robustproto
from robustproto.registry import PluginError, PluginRegistry

THIRD_PARTY_HEAD = '''
import torch
import robustproto


class CosineHead(robustproto.Head):
    """Scores are cosine similarities to one learned vector per class."""

    def __init__(self, embed_dim, num_classes, scale=10.0):
        super().__init__(embed_dim, num_classes)
        self.scale = scale
        self.weight = torch.nn.Parameter(torch.randn(num_classes, embed_dim))

    def forward(self, z):
        return self.scale * torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(
            self.weight, dim=1).t()

    def loss(self, z, scores, y):
        return torch.nn.functional.cross_entropy(scores, y)
'''


def make_distribution(root: Path, name: str, modules: dict[str, str], entry_points: dict[str, dict[str, str]]) -> None:
    """Write an installed distribution ``name`` with ``modules`` and ``entry_points`` under ``root``."""
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"  # the installer normalises the name
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{ep} = {target}" for ep, target in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def run_python(code: str, path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(path))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def plugin_path(tmp_path):
    """A site folder with a working third-party head and a broken one."""
    make_distribution(
        tmp_path,
        "robustproto-cosine",
        {"rp_cosine": THIRD_PARTY_HEAD},
        {"robustproto.heads": {"cosine": "rp_cosine:CosineHead"}},
    )
    make_distribution(
        tmp_path,
        "robustproto-broken",
        {"rp_broken": "import a_module_that_does_not_exist\n", "rp_notahead": "class Thing:\n    pass\n"},
        {"robustproto.heads": {"broken": "rp_broken:Head", "notahead": "rp_notahead:Thing"}},
    )
    return tmp_path


def test_third_party_head_is_listed_and_usable_without_core_changes(plugin_path):
    result = run_python(
        textwrap.dedent(
            """
            import json, torch, robustproto
            model = robustproto.wrap("flatten", head="cosine", num_classes=3, head_options={"scale": 5.0})
            x = torch.rand(4, 1, 28, 28)
            scores = model(x)
            loss = model.head.loss(model.embed(x), scores, torch.tensor([0, 1, 2, 0]))
            loss.backward()
            print(json.dumps({"shape": list(scores.shape), "max": scores.abs().max().item(),
                              "grad": model.head.weight.grad.abs().sum().item(),
                              "plugins": robustproto.list_plugins()}))
            """
        ),
        plugin_path,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["shape"] == [4, 3]
    assert out["max"] <= 5.0 + 1e-5  # the option reached the head
    assert out["grad"] > 0
    heads = out["plugins"]["heads"]
    assert heads["cosine"] == {"source": "robustproto-cosine 0.1", "error": None}


def test_broken_plugins_are_listed_with_their_error_while_the_rest_work(plugin_path):
    result = subprocess.run(
        [sys.executable, "-m", "robustproto", "plugins", "--json"],
        env=dict(os.environ, PYTHONPATH=str(plugin_path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    heads = json.loads(result.stdout)["heads"]
    assert "a_module_that_does_not_exist" in heads["broken"]["error"]
    assert "not a subclass of robustproto.Head" in heads["notahead"]["error"]
    for name in ("linear", "glvq", "gmlvq", "gtlvq", "repulsive", "cosine"):
        assert heads[name]["error"] is None, heads[name]


def test_asking_for_a_broken_plugin_gives_its_error(plugin_path):
    result = run_python(
        "import robustproto\nrobustproto.wrap('flatten', head='broken', num_classes=2)\n", plugin_path
    )
    assert result.returncode != 0
    assert "PluginError" in result.stderr and "a_module_that_does_not_exist" in result.stderr


def test_cli_reports_a_broken_plugin_in_one_line(plugin_path, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import robustproto.registry as r, sys\n"
         "try:\n    r.head_registry.get('broken')\nexcept r.PluginError as e:\n    print(e)\n"],
        env=dict(os.environ, PYTHONPATH=str(plugin_path)),
        capture_output=True, text=True, timeout=120,
    )
    message = result.stdout.strip()
    assert "\n" not in message
    assert message.startswith("head 'broken' from robustproto-broken 0.1 failed to import")


def test_a_name_registered_twice_is_rejected_naming_both_sources(tmp_path):
    make_distribution(
        tmp_path,
        "robustproto-impostor",
        {"rp_impostor": THIRD_PARTY_HEAD},
        {"robustproto.heads": {"glvq": "rp_impostor:CosineHead"}},
    )
    result = run_python(
        "import robustproto, json\nprint(json.dumps(robustproto.list_plugins()['heads']['glvq']))", tmp_path
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert "registered twice" in info["error"]
    assert "robustproto-impostor 0.1" in info["error"] and "robustproto 0." in info["error"]


def test_unknown_name_lists_what_is_installed():
    with pytest.raises(PluginError, match=r"unknown head 'nope' \(installed: .*glvq"):
        robustproto.wrap("flatten", head="nope", num_classes=2)


def test_registry_loads_lazily_and_caches(monkeypatch):
    registry = PluginRegistry("robustproto.heads", robustproto.Head, "head")
    assert "glvq" in registry.names()
    assert all(not info.loaded for info in registry._discover().values())
    first = registry.get("glvq")
    assert registry.get("glvq") is first
    assert registry._discover()["glvq"].loaded and not registry._discover()["linear"].loaded


def test_in_process_refresh_finds_a_newly_installed_plugin(plugin_path, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_path))
    robustproto.refresh_plugins()
    try:
        model = robustproto.wrap("flatten", head="cosine", num_classes=2)
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 2)
    finally:
        monkeypatch.undo()
        robustproto.refresh_plugins()
    with pytest.raises(PluginError, match="unknown head 'cosine'"):
        robustproto.wrap("flatten", head="cosine", num_classes=2)


def test_backbone_plugins_register_timm_models():
    import timm

    robustproto.load_backbones()
    for name in ("flatten", "mlp", "kp_cnn_mnist", "kp_cnn_cifar", "resnet18_cifar"):
        assert timm.is_model(name), name
