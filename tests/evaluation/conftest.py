"""Fixtures of the evaluation tests: small models and data, test-double attacks, and helpers on reports."""

from __future__ import annotations

import copy

import pytest
import torch

import robustproto
from robustproto.attacks import ATTACKS, AttackSpec


@pytest.fixture
def tiny(mnist_like):
    """flatten + GLVQ on 32 random 28×28 images; the first 6 labels are shifted, so some points are misclassified."""
    x, y = mnist_like
    model = robustproto.wrap("flatten", head="glvq", num_classes=10)
    with torch.no_grad():
        model.head.init_from_data(model.embed(x), y)
    y_eval = y.clone()
    y_eval[:6] = (y_eval[:6] + 1) % 10
    return model.eval(), x, y_eval


@pytest.fixture(scope="module")
def digits():
    """64 bundled MNIST test images and a flatten → 16-d linear neck → GLVQ model initialised on 512 training images."""
    from robustproto.data import load_split

    train, test = load_split("mnist-small", "train", max_samples=512), load_split("mnist-small", "test", max_samples=64)
    xt = torch.stack([train[i][0] for i in range(len(train))])
    x = torch.stack([test[i][0] for i in range(len(test))])
    torch.manual_seed(0)
    model = robustproto.wrap("flatten", head="glvq", num_classes=10, embed_dim=16)
    with torch.no_grad():
        model.head.init_from_data(model.embed(xt), train.labels)
    return model.eval(), x, test.labels.clone()


@pytest.fixture
def dropout_bn_model():
    """kp_cnn_mnist (BatchNorm) with dropout and a GLVQ head, given non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    model = robustproto.wrap("kp_cnn_mnist", head="glvq", num_classes=10, in_chans=1, drop_rate=0.5)
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        model.train()(x)  # running statistics that differ from batch statistics
        model.eval()
        model.head.init_from_data(model.embed(x), torch.arange(64) % 10)
    return model


@pytest.fixture
def fake_attack():
    """``fake_attack(build, minimal=False, defaults=None)``: an :class:`AttackSpec` test double for both norms, to be
    put into ``ATTACKS`` with ``monkeypatch.setitem``."""

    def make(build, minimal=False, defaults=None):
        return AttackSpec(("Linf", "L2"), minimal, True, dict(defaults or {}), build, "test double")

    return make


@pytest.fixture
def curve():
    """``curve(report, attack)``: the attack's robust accuracies in the order of ε."""

    def accuracies(report, attack):
        return [r["robust_accuracy"] for r in sorted((r for r in report["results"] if r["attack"] == attack),
                                                     key=lambda r: r["eps"])]

    return accuracies


@pytest.fixture
def scaled_twin():
    """``scaled_twin(model, c)``: the same classifier with its embedding and prototypes multiplied by c (GLVQ's
    decisions do not change)."""

    def twin_of(model, c):
        twin = copy.deepcopy(model)
        with torch.no_grad():
            twin.neck.weight.mul_(c)
            twin.neck.bias.mul_(c)
            twin.head.prototypes.mul_(c)
        return twin

    return twin_of


@pytest.fixture
def fast():
    """Attack options that keep every attack of the menu quick."""
    return {"deepfool": {"steps": 20}, "cw": {"steps": 20}, "fab": {"steps": 20}, "square": {"n_queries": 200},
            "autoattack": {"steps": 10, "n_queries": 100}, "bim": {"steps": 5}, "mim": {"steps": 5},
            "pgd": {"steps": 5}, "pgd-l2": {"steps": 5}}


@pytest.fixture
def menu():
    """``menu(norm)``: every attack of the menu that works in ``norm``."""
    return lambda norm: [name for name, spec in ATTACKS.items() if norm in spec.norms]
