"""Mixup and CutMix (``--mixup``, ``--cutmix``, timm's ``Mixup``): soft targets for heads that take them, a
one-line refusal for heads and regularizers that do not, odd batches, hard-label train accuracy, exact resume.

Runs use the tiny runs of :mod:`tiny_runs` with the ``mlp`` backbone and the ``linear`` head.
"""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from tiny_runs import tiny

from robustproto_plugins.heads.linear import LinearHead
from robustproto.checkpoint import weights_sha256
from robustproto.errors import UsageError
from robustproto.training import train
from robustproto.training.step import mix_batch

MLP = {"backbone": "mlp", "backbone_opt": {"width": 16}, "head": "linear", "sched": "constant", "epochs": 1,
       "max_test_samples": 16, "max_train_samples": 32, "batch_size": 16}


@pytest.fixture
def targets(monkeypatch):
    """Every target the linear head's loss is called with, in order."""
    seen = []
    loss = LinearHead.loss

    def spy(self, z, scores, y):
        seen.append(y.detach().clone())
        return loss(self, z, scores, y)

    monkeypatch.setattr(LinearHead, "loss", spy)
    return seen


def test_linear_head_loss_on_one_hot_targets_equals_the_loss_on_labels():
    torch.manual_seed(0)
    head = LinearHead(8, 5)
    z, y = torch.randn(6, 8), torch.tensor([0, 4, 2, 2, 1, 3])
    scores = head(z)
    torch.testing.assert_close(head.loss(z, scores, F.one_hot(y, 5).float()), head.loss(z, scores, y))
    assert LinearHead.supports_soft_targets


@pytest.mark.parametrize("mix", [{"mixup": 0.2}, {"cutmix": 1.0}, {"mixup": 0.2, "cutmix": 1.0}],
                         ids=["mixup", "cutmix", "both"])
def test_linear_head_trains_on_soft_targets(tmp_path, targets, mix):
    result = train(tiny(tmp_path, **MLP, **mix))
    assert math.isfinite(result.metrics[0]["train_loss"])
    assert len(targets) == 2
    for t in targets:
        assert t.shape == (16, 10) and t.dtype == torch.float32
        torch.testing.assert_close(t.sum(1), torch.ones(16))
    assert any(not torch.equal(t, (t == t.max(1, keepdim=True).values).float()) for t in targets)  # mixed


def test_an_odd_last_batch_mixes_all_but_its_last_image(tmp_path, targets):
    train(tiny(tmp_path, **{**MLP, "max_train_samples": 37}, mixup=1.0))  # batches of 16, 16 and 5
    assert [len(t) for t in targets] == [16, 16, 5]
    last = targets[-1]
    assert last[-1].max() == 1 and last[-1].sum() == 1  # one-hot
    assert (last[:4].max(1).values < 1).any()


@pytest.mark.parametrize("size", [1, 5])
def test_mix_batch_leaves_the_odd_image_out(size):
    from timm.data import Mixup

    mixup = Mixup(mixup_alpha=1.0, label_smoothing=0.0, num_classes=3)
    x, y = torch.rand(size, 1, 4, 4), torch.arange(size) % 3
    odd = x[-1].clone()
    mixed, target = mix_batch(mixup, x, y)
    assert mixed.shape == x.shape and target.shape == (size, 3)
    assert torch.equal(mixed[-1], odd) and torch.equal(target[-1], F.one_hot(y[-1], 3).float())


def test_train_accuracy_counts_the_batch_labels_not_the_mixed_targets(tmp_path, targets, monkeypatch):
    import robustproto.training.setup as setup

    labels, scores = [], []

    class Shifted:
        """Trains towards the next class, so a count against the targets and one against the labels never agree
        on a sample."""

        num_classes = 10

        def __call__(self, x, y):
            labels.append(y.clone())
            return x, F.one_hot((y + 1) % 10, 10).float()

    loss = LinearHead.loss

    def keep_scores(self, z, s, y):
        scores.append(s.detach().clone())
        return loss(self, z, s, y)

    monkeypatch.setattr(setup, "create_mixup", lambda cfg, model: Shifted())
    monkeypatch.setattr(LinearHead, "loss", keep_scores)
    result = train(tiny(tmp_path, **{**MLP, "max_train_samples": 64}, mixup=0.2))
    correct = sum(int((s.argmax(1) == y).sum()) for s, y in zip(scores, labels))
    assert correct > 0
    assert result.metrics[0]["train_acc"] == correct / 64


def test_mixup_resumes_exactly_after_an_epoch_and_inside_one(tmp_path, monkeypatch):
    mix = {**MLP, "max_train_samples": 64, "mixup": 0.4, "cutmix": 1.0, "epochs": 2}
    full = train(tiny(tmp_path, "full", **mix))
    train(tiny(tmp_path, "parts", **{**mix, "epochs": 1}))
    resumed = train(tiny(tmp_path, "parts", **mix, resume=str(tmp_path / "parts")))
    assert weights_sha256(resumed.model) == weights_sha256(full.model)

    calls, loss = [], LinearHead.loss

    def interrupt(self, z, scores, y):  # Ctrl-C during the 6th step: the loop saves a state after it
        calls.append(None)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(self, z, scores, y)

    monkeypatch.setattr(LinearHead, "loss", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, "cut", **mix))
    monkeypatch.setattr(LinearHead, "loss", loss)
    resumed = train(tiny(tmp_path, "cut", **mix, resume=str(tmp_path / "cut")))
    assert weights_sha256(resumed.model) == weights_sha256(full.model)
    assert weights_sha256(full.model) != weights_sha256(train(tiny(tmp_path, "plain", **{**mix, "mixup": 0.0,
                                                                                         "cutmix": 0.0})).model)


@pytest.mark.parametrize("changes, names", [({"head": "glvq"}, "head 'glvq'"),
                                            ({"reg": ["lipschitz"]}, "regularizers")])
def test_a_head_without_soft_targets_or_a_regularizer_is_refused(tmp_path, changes, names):
    with pytest.raises(UsageError) as err:
        train(tiny(tmp_path, **{**MLP, **changes}, mixup=0.2))
    message = str(err.value)
    assert message.startswith("mixup/cutmix: ") and names in message and "\n" not in message
    assert not (tmp_path / "run").exists()  # refused before any training work


@pytest.mark.parametrize("key, value", [("mixup", -0.1), ("mixup", math.nan), ("cutmix", math.inf),
                                        ("mixup_prob", 1.5), ("mixup_switch_prob", -0.5), ("mixup_prob", math.nan)])
def test_bad_values_are_one_line_usage_errors_naming_the_option(tmp_path, key, value):
    with pytest.raises(UsageError) as err:
        tiny(tmp_path, **{key: value})
    assert str(err.value).startswith(f"{key}: ") and "\n" not in str(err.value)
