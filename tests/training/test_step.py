"""The public training step: ``TrainStep``, ``compute_losses`` and ``train_one_epoch``, called directly."""

from __future__ import annotations

import pytest
import torch
from tiny_runs import tiny

from robustproto.checkpoint import weights_sha256
from robustproto.data import load_split
from robustproto.errors import NonFiniteLossError
from robustproto.registry import create_regularizer
from robustproto.regularizer import Regularizer
from robustproto.training import TrainStep, build_model, compute_losses, train_one_epoch


@pytest.fixture
def accelerator():
    """A single-process Accelerator, forgotten afterwards (a later run may use another mixed precision)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    yield Accelerator()
    AcceleratorState._reset_state()


def model_and_batch(tmp_path, n):
    """A tiny model (its head's weights random, so the head's loss reaches the backbone) and ``n`` images."""
    data = load_split("mnist-small", "train", max_samples=n)
    model = build_model(tiny(tmp_path), data)
    with torch.no_grad():
        model.head.weight.normal_()
    return model, torch.stack([data[i][0] for i in range(n)]), data.labels[:n]


def test_extra_inputs_are_embedded_in_the_same_call_and_split_back(testkit, tmp_path):
    data = load_split("mnist-small", "train", max_samples=6)
    model = build_model(tiny(tmp_path), data).eval()
    x = torch.stack([data[i][0] for i in range(6)])
    extra_a, extra_b = x.flip(-1)[:4], torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        z, scores, (za, zb) = TrainStep(model)(x, [extra_a, extra_b])
        assert torch.allclose(z, model.embed(x), atol=1e-6) and torch.allclose(scores, model(x), atol=1e-6)
        assert torch.allclose(za, model.embed(extra_a), atol=1e-6)
        assert torch.allclose(zb, model.embed(extra_b), atol=1e-6)


def test_compute_losses_gives_the_head_loss_and_each_penalty_on_one_graph(testkit, tmp_path, accelerator):
    model, x, y = model_and_batch(tmp_path, 8)
    model.eval()  # BatchNorm on running statistics: an embedding does not depend on the rest of the call
    regs = {"near": create_regularizer("probe", weight=0.5), "far": create_regularizer("probe", weight=2.0)}
    losses = compute_losses(TrainStep(model), model, regs, x, y, 0, accelerator)
    with torch.no_grad():
        z, z_flipped = model.embed(x), model.embed(x.flip(-1))
        distance = (z - z_flipped).pow(2).sum(1).mean()
        assert torch.allclose(losses.scores, model.head(z), atol=1e-5)
        assert torch.allclose(losses.loss, model.head.loss(z, model.head(z), y), atol=1e-5)
    assert list(losses.penalties) == ["near", "far"]  # each its own extra inputs, split back in order
    assert torch.allclose(losses.penalties["near"], 0.5 * distance, rtol=1e-4)
    assert torch.allclose(losses.penalties["far"], 2.0 * distance, rtol=1e-4)
    assert torch.allclose(losses.total, losses.loss + losses.penalties["near"] + losses.penalties["far"])
    # one graph: every term reaches the backbone, and the gradient of the total is the sum of theirs
    params = list(model.parameters())
    terms = [losses.loss, *losses.penalties.values()]
    grads = [torch.autograd.grad(t, params, retain_graph=True, allow_unused=True) for t in terms]
    first_conv = next(i for i, p in enumerate(params) if p.ndim == 4)
    assert all(g[first_conv] is not None and g[first_conv].abs().sum() > 0 for g in grads)
    losses.total.backward()
    for i, p in enumerate(params):
        expected = sum(g[i] for g in grads if g[i] is not None)
        assert torch.allclose(p.grad, expected, atol=1e-6), i


def test_train_one_epoch_steps_through_every_batch_and_stops_when_asked(testkit, tmp_path, accelerator):
    model, x, y = model_and_batch(tmp_path, 24)
    batches = list(zip(x.split(8), y.split(8)))
    regs = {"probe": create_regularizer("probe", weight=0.01, input_grad=True)}
    step_module, optimizer = TrainStep(model), torch.optim.SGD(model.parameters(), lr=0.01)
    before, seen = weights_sha256(model), []
    result = train_one_epoch(step_module, model, regs, batches, optimizer, accelerator, epoch=0, global_step=5,
                             on_step=lambda sums, seconds: seen.append(sums["seen"]))
    assert (result.batches_done, result.global_step, result.stopped) == (3, 8, False)
    assert seen == [8, 16, 24] and result.sums["seen"] == 24 and result.sums["seconds"] > 0
    assert result.sums["loss"] > 0 and result.sums["reg/probe"] > 0 and 0 <= result.sums["correct"] <= 24
    assert model.head.steps.item() == 3  # after_step after every optimiser step
    assert regs["probe"].calls == 3 and regs["probe"].input_grad == 3  # x required grad for it
    assert weights_sha256(model) != before and step_module.training
    # a stop request ends the epoch after the step that saw it
    result = train_one_epoch(step_module, model, regs, batches, optimizer, accelerator, epoch=1, global_step=8,
                             should_stop=lambda: True)
    assert (result.batches_done, result.global_step, result.stopped) == (1, 9, True)
    # a frozen backbone stays as it was, BatchNorm statistics included; the head still learns
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head = model.head.weight.detach().clone()
    train_one_epoch(step_module, model, regs, batches, optimizer, accelerator, epoch=2, freeze_backbone=True)
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone.items())
    assert not torch.equal(head, model.head.weight)


def test_train_one_epoch_stops_at_a_non_finite_loss_before_updating_the_weights(testkit, tmp_path, accelerator):
    model, x, y = model_and_batch(tmp_path, 24)
    batches = list(zip(x.split(8), y.split(8)))
    regs = {"probe": create_regularizer("probe", nan_at_step=1)}
    after_step_1: list[list[torch.Tensor]] = []
    with pytest.raises(NonFiniteLossError, match=r"step 2 \(epoch 1, batch 2\): reg/probe = nan.*"
                                                 r"Last good checkpoint: somewhere\."):
        train_one_epoch(TrainStep(model), model, regs, batches, torch.optim.SGD(model.parameters(), lr=0.01),
                        accelerator, epoch=0, last_good="somewhere",
                        on_step=lambda sums, seconds: after_step_1.append([p.detach().clone()
                                                                          for p in model.parameters()]))
    (kept,) = after_step_1  # one step was taken; the failing step's forward left every parameter as it was
    assert all(torch.equal(a, b) for a, b in zip(kept, model.parameters())) and model.head.steps.item() == 1


# --- prepare_batch, replaces_inputs and clean_weight -----------------------------------------------------------

class Flipper(Regularizer):
    """Replaces the batch by its mirror image; records the BatchContexts it saw; penalty 0.1·mean z²."""

    replaces_inputs = True

    def __init__(self, clean_weight=1.0, replace=True):
        super().__init__()
        self.clean_weight, self.replace, self.seen, self.ctx_x = clean_weight, replace, [], []

    def prepare_batch(self, batch):
        self.seen.append(batch)
        return batch.x.flip(-1) if self.replace else None

    def penalty(self, ctx):
        self.ctx_x.append(ctx.x)
        return 0.1 * ctx.z.float().pow(2).mean()


def test_a_regularizer_that_replaces_the_batch_moves_the_whole_step_onto_it(testkit, tmp_path, accelerator):
    model, x, y = model_and_batch(tmp_path, 8)
    model.eval()
    flipper, probe = Flipper(), create_regularizer("probe", weight=0.5, input_grad=True)
    losses = compute_losses(TrainStep(model), model, {"flip": flipper, "probe": probe}, x, y, 7, accelerator,
                            epoch=1.5)
    (batch,) = flipper.seen
    assert batch.x is x and batch.y is y and batch.model is model and (batch.step, batch.epoch) == (7, 1.5)
    with torch.no_grad():
        z = model.embed(x.flip(-1))
        assert torch.allclose(losses.loss, model.head.loss(z, model.head(z), y), atol=1e-5)
        assert torch.allclose(losses.scores, model.head(z), atol=1e-5)
        # the probe's extra inputs are the mirror of the replaced batch: the clean batch itself
        assert torch.allclose(losses.penalties["probe"], 0.5 * (z - model.embed(x)).pow(2).sum(1).mean(), rtol=1e-4)
    assert torch.equal(flipper.ctx_x[0], x.flip(-1)) and flipper.ctx_x[0].requires_grad  # probe needs input grad
    assert probe.input_grad == 1 and losses.clean_weight == 1.0


def test_clean_weight_scales_the_head_loss_and_zero_drops_it_exactly(testkit, tmp_path, accelerator):
    model, x, y = model_and_batch(tmp_path, 8)
    model.eval()
    step = TrainStep(model)
    plain = compute_losses(step, model, {"probe": create_regularizer("probe")}, x, y, 0, accelerator)
    half = compute_losses(step, model, {"a": Flipper(0.5, replace=False), "probe": create_regularizer("probe")},
                          x, y, 0, accelerator)
    assert half.clean_weight == 0.5 and torch.allclose(half.loss, plain.loss)
    assert torch.allclose(half.total, 0.5 * half.loss + sum(half.penalties.values()))
    zero = compute_losses(step, model, {"a": Flipper(0.0, replace=False), "b": Flipper(3.0, replace=False)}, x, y, 0,
                          accelerator)
    assert zero.clean_weight == 0.0 and float(zero.loss.detach()) > 0
    assert torch.equal(zero.total, zero.penalties["a"] + zero.penalties["b"])  # no 0·loss term at all
    params = [p for p in model.head.parameters()]
    grads = torch.autograd.grad(zero.total, params, allow_unused=True)
    assert all(g is None or not g.any() for g in grads)  # the head only sees the (dropped) head loss


def test_only_one_regularizer_may_replace_the_batch_and_only_if_it_declares_it(testkit, tmp_path, accelerator):
    from robustproto.errors import UsageError
    from robustproto.training.step import check_replaces_inputs

    with pytest.raises(UsageError, match="at most one regularizer may replace.*a, b"):
        check_replaces_inputs({"a": Flipper(), "b": Flipper(), "probe": create_regularizer("probe")})
    check_replaces_inputs({"a": Flipper(), "probe": create_regularizer("probe")})
    model, x, y = model_and_batch(tmp_path, 4)
    sneaky = Flipper()
    sneaky.replaces_inputs = False
    with pytest.raises(RuntimeError, match="does not declare replaces_inputs"):
        compute_losses(TrainStep(model), model, {"sneaky": sneaky}, x, y, 0, accelerator)


def test_train_one_epoch_hands_prepare_batch_the_fractional_epoch(testkit, tmp_path, accelerator):
    model, x, y = model_and_batch(tmp_path, 24)
    batches = list(zip(x.split(8), y.split(8)))
    flipper = Flipper(replace=False)
    train_one_epoch(TrainStep(model), model, {"f": flipper}, batches, torch.optim.SGD(model.parameters(), lr=0.01),
                    accelerator, epoch=2, global_step=4)
    assert [(b.step, b.epoch) for b in flipper.seen] == [(4, 2.0), (5, 2 + 1 / 3), (6, 2 + 2 / 3)]
