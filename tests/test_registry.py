"""Plugins: discovery through entry points, in-process registration, the contract checks, backbones by model name.

One test discovers real installed distributions (``*.dist-info`` folders with ``entry_points.txt`` on
``sys.path``, exactly what ``pip install`` leaves behind); every other test registers its plugins in-process
with ``robustproto.register_head`` / ``register_regularizer`` (the ``register`` fixture of conftest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch

import robustproto
from robustproto import registry
from robustproto.config import resolve_config
from robustproto.registry import PluginError, PluginRegistry, check_head, head_registry

# The README's "Writing a plugin" example, as written before heads had capability flags.
README_HEAD = '''
import torch, robustproto

class CosineHead(robustproto.Head):
    def __init__(self, embed_dim, num_classes, scale=10.0):
        super().__init__(embed_dim, num_classes)
        self.scale = scale
        self.weight = torch.nn.Parameter(torch.randn(num_classes, embed_dim))

    def forward(self, z):              # (B, K) scores; argmax is the prediction
        z, w = torch.nn.functional.normalize(z, dim=1), torch.nn.functional.normalize(self.weight, dim=1)
        return self.scale * z @ w.t()

    def loss(self, z, scores, y):      # scalar
        return torch.nn.functional.cross_entropy(scores, y)
'''
namespace: dict = {"__name__": __name__}
exec(README_HEAD, namespace)
CosineHead = namespace["CosineHead"]


class MarginCosineHead(CosineHead):
    """An older head with a certified margin: it overrides the hook and declares nothing."""

    def margin(self, z):
        return torch.zeros(len(z))

    def after_step(self):
        self.weight.data = torch.nn.functional.normalize(self.weight.data, dim=1)


class FlipReg(robustproto.Regularizer):
    """A regularizer written to the README's contract before it was checked: penalty, needs_input_grad,
    extra_inputs, attach, metrics."""

    needs_input_grad = True

    def __init__(self, weight=1.0):
        super().__init__()
        self.weight = weight
        self.attached = False

    def attach(self, model):
        self.attached = model.head is not None

    def extra_inputs(self, x):
        return x.flip(-1)

    def penalty(self, ctx):
        (grad,) = torch.autograd.grad(ctx.scores.sum(), ctx.x, create_graph=True)
        return self.weight * ((ctx.z - ctx.extra_z).pow(2).sum(1).mean() + grad.pow(2).sum() / len(grad))

    def metrics(self):
        return {"attached": float(self.attached)}


def test_old_readme_head_and_regularizer_registered_in_process_train(register, tmp_path):
    register("head", "cosine", CosineHead)
    register("head", "margin-cosine", MarginCosineHead)
    register("regularizer", "flip", FlipReg)
    assert not (CosineHead.supports_margin or CosineHead.supports_after_step or CosineHead.scores_are_logits)
    assert MarginCosineHead.supports_margin and MarginCosineHead.supports_after_step  # set by Head.__init_subclass__
    assert not MarginCosineHead.supports_init_from_data
    assert robustproto.list_plugins()["heads"]["cosine"] == {
        "source": f"{__name__} (registered in-process)", "error": None}
    model = robustproto.wrap("flatten", head="margin-cosine", num_classes=3, img_size=8, in_chans=1,
                             head_options={"scale": 5.0})
    assert model(torch.rand(4, 1, 8, 8)).abs().max() <= 5.0 + 1e-5  # the option reached the head
    cfg = resolve_config({"backbone": "flatten", "head": "cosine",
                          "reg": ["flip:weight=0.1"], "max_train_samples": 32, "max_test_samples": 16,
                          "batch_size": 16, "epochs": 1, "output": str(tmp_path / "run")})
    result = robustproto.train(cfg)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["reg/flip"] > 0 and record["reg/flip/attached"] == 1.0
    assert isinstance(result.model.head, CosineHead)


class NoMargin(CosineHead):
    supports_margin = True  # declared, but margin is Head's


class NoInit(CosineHead):
    supports_init_from_data = True


class NoAfterStep(CosineHead):
    supports_after_step = True


class NoAffineMap(CosineHead):
    scores_affine_in_embedding = True


class StringFlag(CosineHead):
    scores_are_logits = "yes"


class NoLoss(robustproto.Head):
    def forward(self, z):
        return z


class NoPenalty(robustproto.Regularizer):
    pass


class StringInputGrad(FlipReg):
    needs_input_grad = "true"


class NotAHead:
    pass


@pytest.mark.parametrize("kind,cls,words", [
    ("head", NoMargin, "declares supports_margin = True but does not implement margin()"),
    ("head", NoInit, "declares supports_init_from_data = True but does not implement init_from_data()"),
    ("head", NoAfterStep, "declares supports_after_step = True but does not implement after_step()"),
    ("head", NoAffineMap, "declares scores_affine_in_embedding = True but does not implement affine_map()"),
    ("head", StringFlag, "sets scores_are_logits = 'yes', but a capability flag is True or False"),
    ("head", NoLoss, "does not implement loss()"),
    ("head", NotAHead, "is not a subclass of robustproto.Head"),
    ("regularizer", NoPenalty, "does not implement penalty(ctx)"),
    ("regularizer", StringInputGrad, "sets needs_input_grad = 'true', but it is True or False"),
    ("regularizer", CosineHead, "is not a subclass of robustproto.Regularizer"),
])
def test_a_plugin_that_breaks_its_contract_is_refused_when_registered(kind, cls, words):
    register = {"head": robustproto.register_head, "regularizer": robustproto.register_regularizer}[kind]
    with pytest.raises(PluginError) as err:
        register("bad", cls)
    assert str(err.value).startswith(
        f"{kind} 'bad' from {__name__} (registered in-process) ({__name__}:{cls.__qualname__}) {words}")
    with pytest.raises(PluginError, match=f"unknown {kind} 'bad'"):  # nothing was registered
        (robustproto.create_head("bad", 4, 2) if kind == "head" else robustproto.create_regularizer("bad"))


def test_declaring_a_capability_false_is_always_allowed_and_builtin_heads_pass():
    class Modest(MarginCosineHead):
        supports_margin = False  # implemented, but not certified for this subclass

    assert check_head(Modest) == []
    for name in head_registry.names():
        assert check_head(head_registry.get(name)) == [], name


def test_a_name_taken_by_an_entry_point_or_a_registration_is_refused_naming_both(register):
    with pytest.raises(PluginError) as err:
        robustproto.register_head("glvq", CosineHead)
    message = str(err.value)
    assert "head 'glvq' is registered twice" in message
    assert "robustproto 0." in message and "robustproto_plugins.heads.glvq:GLVQ" in message
    assert f"{__name__} (registered in-process) ({__name__}:CosineHead)" in message
    assert robustproto.create_head("glvq", 4, 2).__class__.__name__ == "GLVQ"  # the installed one still works
    register("head", "cosine", CosineHead)
    with pytest.raises(PluginError, match="head 'cosine' is registered twice"):
        robustproto.register_head("cosine", MarginCosineHead)
    with pytest.raises(PluginError, match="was not registered in this process"):
        head_registry.unregister("glvq")


def test_unknown_name_lists_what_is_installed():
    with pytest.raises(PluginError, match=r"unknown head 'nope' \(installed: .*glvq"):
        robustproto.wrap("flatten", head="nope", num_classes=2)


def test_bad_options_are_usage_errors_naming_the_plugin_and_the_cause():
    with pytest.raises(robustproto.errors.UsageError, match=r"head 'glvq' rejected its options \['bogus'\]") as err:
        robustproto.create_head("glvq", 4, 2, bogus=1)
    assert isinstance(err.value.__cause__, TypeError)
    with pytest.raises(ValueError, match=r"regularizer 'lipschitz' rejected its options \['bogus'\]"):
        robustproto.create_regularizer("lipschitz", bogus=1)
    with pytest.raises(ValueError, match="backbone 'flatten' rejected its options"):
        robustproto.create_backbone("flatten", bogus=1)


def test_registry_loads_lazily_and_caches():
    reg = PluginRegistry("robustproto.heads", "head", check_head)
    assert "glvq" in reg.names()
    assert all(not info.loaded for info in reg._discover().values())
    first = reg.get("glvq")
    assert reg.get("glvq") is first
    assert reg._discover()["glvq"].loaded and not reg._discover()["linear"].loaded


def test_backbone_entry_points_are_named_after_the_models_they_register(monkeypatch):
    fresh = PluginRegistry("robustproto.backbones", "backbone")
    imported: list[str] = []
    real_import = registry.importlib.import_module
    monkeypatch.setattr(registry.importlib, "import_module", lambda name: imported.append(name) or real_import(name))
    monkeypatch.setattr(registry, "backbone_registry", fresh)
    assert robustproto.create_backbone("kp_cnn_cifar").num_features == 64
    assert imported == ["robustproto_plugins.backbones.small_cnn"]  # only the module of the model asked for
    assert robustproto.create_backbone("kp_cnn_mnist").num_features == 16
    assert imported == ["robustproto_plugins.backbones.small_cnn"]  # a module named by two entry points: once
    assert robustproto.create_backbone("test_resnet").num_features > 0  # a timm model: no plugin imported
    assert len(imported) == 1
    described = fresh.describe()
    assert set(described) == {"flatten", "mlp", "kp_cnn_mnist", "kp_cnn_cifar", "madry_cnn_mnist", "resnet18_cifar",
                              "preact_resnet18_cifar", "gloro_2c2f_mnist", "gloro_4c3f_mnist", "gloro_6c2f_cifar"}
    assert sorted(imported) == sorted(f"robustproto_plugins.backbones.{m}"
                                      for m in ("small_cnn", "flatten", "mlp", "resnet_cifar", "gloro_cnn"))
    for name, info in described.items():
        assert info["error"] is None and timm.is_model(name), name


def test_an_unknown_backbone_names_the_broken_backbone_plugins(monkeypatch):
    fresh = PluginRegistry("robustproto.backbones", "backbone")
    fresh._discover()["broken_net"] = registry.PluginInfo(
        "broken_net", "robustproto-nets 0.1", "rp_nets_missing",
        obj=registry.metadata.EntryPoint("broken_net", "rp_nets_missing", "robustproto.backbones"))
    monkeypatch.setattr(registry, "backbone_registry", fresh)
    with pytest.raises(PluginError, match=r"backbone 'broken_net' from robustproto-nets 0.1 failed to import "
                                          r"\(rp_nets_missing\): ModuleNotFoundError"):
        robustproto.create_backbone("broken_net")
    with pytest.raises(PluginError, match=r"unknown backbone 'no_such_net'.*failed to load: backbone 'broken_net'"):
        robustproto.create_backbone("no_such_net")


def test_a_proto_model_is_what_a_regularizer_may_use():
    model = robustproto.wrap("flatten", head="glvq", num_classes=3, img_size=8)
    assert isinstance(model, robustproto.RegularizedModel)
    assert not isinstance(torch.nn.Linear(2, 2), robustproto.RegularizedModel)


# --- the one test of discovery: distributions installed on sys.path ------------------------------------------

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


USE_THE_PLUGINS = """
import json, torch, robustproto
model = robustproto.wrap("flatten", head="cosine", num_classes=3, head_options={"scale": 5.0})
x = torch.rand(4, 1, 28, 28)
scores = model(x)
model.head.loss(model.embed(x), scores, torch.tensor([0, 1, 2, 0])).backward()
errors = {}
for name in ("broken", "falsely-certified"):
    try:
        robustproto.create_head(name, 4, 2)
    except robustproto.PluginError as exc:
        errors[name] = str(exc)
print(json.dumps({"shape": list(scores.shape), "max": scores.abs().max().item(),
                  "grad": model.head.weight.grad.abs().sum().item(), "errors": errors,
                  "listed": robustproto.list_plugins()["heads"]}))  # what `robustproto plugins --json` prints
"""


def test_installed_distributions_are_discovered_listed_and_isolated(tmp_path, monkeypatch):
    make_distribution(tmp_path, "robustproto-cosine", {"rp_cosine": README_HEAD},
                      {"robustproto.heads": {"cosine": "rp_cosine:CosineHead"}})
    make_distribution(
        tmp_path, "robustproto-broken",
        {"rp_broken": "import a_module_that_does_not_exist\n", "rp_notahead": "class Thing:\n    pass\n",
         "rp_false": README_HEAD + "\nclass Certified(CosineHead):\n    supports_margin = True\n"},
        {"robustproto.heads": {"broken": "rp_broken:Head", "notahead": "rp_notahead:Thing",
                               "falsely-certified": "rp_false:Certified", "glvq": "rp_cosine:CosineHead"}},
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    # a fresh interpreter, as after `pip install`: one process both lists and uses the plugins (a start costs seconds)
    used = subprocess.run([sys.executable, "-c", USE_THE_PLUGINS], env=env, capture_output=True, text=True,
                          timeout=120)
    assert used.returncode == 0, used.stderr
    out = json.loads(used.stdout)
    heads = out["listed"]
    assert heads["cosine"] == {"source": "robustproto-cosine 0.1", "error": None}
    assert "failed to import (rp_broken:Head): ModuleNotFoundError" in heads["broken"]["error"]
    assert "a_module_that_does_not_exist" in heads["broken"]["error"]
    assert heads["notahead"]["error"] == ("head 'notahead' from robustproto-broken 0.1 (rp_notahead:Thing) "
                                          "is not a subclass of robustproto.Head")
    assert heads["falsely-certified"]["error"] == (
        "head 'falsely-certified' from robustproto-broken 0.1 (rp_false:Certified) declares supports_margin = True "
        "but does not implement margin(); implement it or drop the flag")
    assert "head 'glvq' is registered twice" in heads["glvq"]["error"]
    assert "robustproto-broken 0.1 (rp_cosine:CosineHead)" in heads["glvq"]["error"]
    for name in ("linear", "gmlvq", "gtlvq", "repulsive"):
        assert heads[name]["error"] is None, heads[name]

    assert out["shape"] == [4, 3] and out["max"] <= 5.0 + 1e-5 and out["grad"] > 0
    assert out["errors"]["broken"].startswith("head 'broken' from robustproto-broken 0.1 failed to import")
    assert "\n" not in out["errors"]["broken"]
    assert out["errors"]["falsely-certified"] == heads["falsely-certified"]["error"]

    # the running interpreter finds a distribution installed after it started once asked to rescan
    monkeypatch.syspath_prepend(str(tmp_path))
    robustproto.refresh_plugins()
    try:
        assert robustproto.wrap("flatten", head="cosine", num_classes=2)(torch.rand(2, 1, 28, 28)).shape == (2, 2)
    finally:
        monkeypatch.undo()
        robustproto.refresh_plugins()
    with pytest.raises(PluginError, match="unknown head 'cosine'"):
        robustproto.wrap("flatten", head="cosine", num_classes=2)
