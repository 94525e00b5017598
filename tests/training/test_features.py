"""Training features timm users expect: model EMA, gradient accumulation, gradient clipping, channels-last and
torch.compile (``--model-ema``, ``--grad-accum-steps``, ``--clip-grad``/``--clip-mode``, ``--channels-last``,
``--compile``).

Runs use the tiny runs of :mod:`tiny_runs`; the exact-arithmetic cases use the ``mlp`` backbone (no BatchNorm)
with a linear head, whose updates do not depend on how a batch is split.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_runs import tiny

import robustproto
from robustproto.checkpoint import read_jsonl, weights_sha256
from robustproto.errors import MissingFileError, UsageError
from robustproto.training import build_model, init_head_from_data, train
from robustproto.training.setup import load_data

# one-layer MLP on MNIST with plain SGD momentum (its first step is lr · gradient)
MLP = {"backbone": "mlp", "backbone_opt": {"width": 16}, "head": "linear", "optimizer": "momentum",
       "sched": "constant", "epochs": 1, "max_test_samples": 16}


def initial_model(cfg):
    """The model a run of ``cfg`` starts from (as ``prepare_run`` builds and initialises it)."""
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    train_data, _ = load_data(cfg)
    model = build_model(cfg, train_data)
    init_head_from_data(model, train_data, cfg.init_samples, cfg.batch_size * 2)
    return model


def params(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# ------------------------------------------------------------------ model EMA
def test_ema_with_decay_0_is_the_raw_weights_and_with_decay_1_the_initial_ones(tmp_path):
    follow = train(tiny(tmp_path, "d0", **MLP, max_train_samples=64, model_ema=True, model_ema_decay=0.0))
    ema = robustproto.load(tmp_path / "d0", ema=True)
    for name, p in follow.model.named_parameters():
        assert torch.equal(ema.get_parameter(name), p), name

    cfg = tiny(tmp_path, "d1", **MLP, max_train_samples=64, model_ema=True, model_ema_decay=1.0)
    start = params(initial_model(cfg))
    kept = train(cfg)
    ema = robustproto.load(tmp_path / "d1", ema=True)
    for name, p in ema.named_parameters():
        assert torch.equal(p, start[name]), name
    assert not torch.equal(kept.model.get_parameter(name), start[name])  # the raw weights did move
    assert robustproto.load(tmp_path / "d1" / "model_ema.safetensors").state_dict().keys() == ema.state_dict().keys()


def test_ema_is_logged_saved_and_resumes_exactly(testkit, tmp_path):
    ema = {"model_ema": True, "model_ema_decay": 0.9, "sched": "constant"}
    full = train(tiny(tmp_path, "full", epochs=3, **ema))
    train(tiny(tmp_path, "parts", epochs=2, **ema))
    train(tiny(tmp_path, "parts", epochs=3, resume=str(tmp_path / "parts"), **ema))
    records = read_jsonl(tmp_path / "parts" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(0 <= r["test_acc_ema"] <= 1 for r in records)
    full_ema, resumed_ema = robustproto.load(tmp_path / "full", ema=True), robustproto.load(tmp_path / "parts", ema=True)
    assert weights_sha256(resumed_ema) == weights_sha256(full_ema)
    assert weights_sha256(robustproto.load(tmp_path / "parts")) == weights_sha256(full.model)
    assert weights_sha256(full_ema) != weights_sha256(full.model)  # a real average, not a copy


def test_ema_of_a_run_without_it_is_a_clear_error(tmp_path):
    train(tiny(tmp_path, "plain", **MLP, max_train_samples=16))
    assert "test_acc_ema" not in read_jsonl(tmp_path / "plain" / "metrics.jsonl")[0]
    with pytest.raises(MissingFileError, match="--model-ema"):
        robustproto.load(tmp_path / "plain", ema=True)


# ------------------------------------------------------------------ gradient accumulation
def test_accumulated_small_batches_make_the_same_update_as_one_large_batch(tmp_path):
    # 64 samples: 2 optimizer steps on batches of 32, or on 4 accumulated batches of 8 each
    large = train(tiny(tmp_path, "large", **MLP, max_train_samples=64, batch_size=32))
    small = train(tiny(tmp_path, "small", **MLP, max_train_samples=64, batch_size=8, grad_accum_steps=4))
    for name, p in large.model.named_parameters():
        torch.testing.assert_close(small.model.get_parameter(name), p, rtol=1e-5, atol=1e-6)
    for run in ("large", "small"):
        assert json.loads((tmp_path / run / "state" / "progress.json").read_text())["global_step"] == 2
    assert small.metrics[0]["train_loss"] == pytest.approx(large.metrics[0]["train_loss"], rel=1e-5)


def test_an_epoch_ends_with_an_optimizer_step_on_the_last_partial_accumulation(tmp_path):
    # 5 batches with grad_accum_steps 2: steps after batches 2, 4 and 5 in each epoch
    train(tiny(tmp_path, **{**MLP, "epochs": 2}, max_train_samples=40, batch_size=8, grad_accum_steps=2))
    assert json.loads((tmp_path / "run" / "state" / "progress.json").read_text())["global_step"] == 6


# ------------------------------------------------------------------ gradient clipping
@pytest.mark.parametrize("mode", ["norm", "value"])
def test_clipping_bounds_the_first_sgd_step(tmp_path, mode):
    lr, clip = 0.5, 1e-3
    cfg = tiny(tmp_path, mode, **MLP, max_train_samples=16, batch_size=16, lr=lr, clip_grad=clip, clip_mode=mode)
    start = params(initial_model(cfg))
    moved = torch.cat([(p.detach() - start[n]).flatten() for n, p in train(cfg).model.named_parameters()])
    if mode == "norm":
        assert float(moved.norm()) == pytest.approx(lr * clip, rel=1e-3)  # the raw gradient is far larger
    else:
        assert float(moved.abs().max()) == pytest.approx(lr * clip, rel=1e-3)


@pytest.mark.parametrize("key, value", [("clip_grad", 0), ("clip_grad", -1.0), ("clip_grad", math.nan),
                                        ("clip_mode", "max"), ("grad_accum_steps", 0), ("model_ema_decay", 1.5),
                                        ("model_ema_decay", -0.1)])
def test_bad_values_are_one_line_usage_errors_naming_the_option(tmp_path, key, value):
    with pytest.raises(UsageError) as err:
        tiny(tmp_path, **{key: value})
    assert str(err.value).startswith(f"{key}: ") and "\n" not in str(err.value)


# ------------------------------------------------------------------ channels-last
def test_channels_last_trains_like_the_default_memory_format(testkit, tmp_path):
    # The two layouts' convolutions round differently and BatchNorm on 16 images amplifies it, so: 4 plain SGD
    # steps (Adam's normalised steps would blow the rounding of near-zero gradients up to ±lr) and a loose tolerance
    run = {"epochs": 1, "optimizer": "momentum", "max_train_samples": 64}
    plain = train(tiny(tmp_path, "plain", **run))
    last = train(tiny(tmp_path, "last", channels_last=True, **run))
    conv = next(p for p in last.model.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    reference = plain.model.state_dict()
    for name, value in last.model.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------ torch.compile
@pytest.mark.parametrize("reg", ["cross-lipschitz", "lipschitz-margin:bound=local"])
def test_compile_refuses_a_regularizer_that_needs_double_backward(tmp_path, reg):
    cfg = tiny(tmp_path, **MLP, max_train_samples=16, compile=True, reg=[reg])
    with pytest.raises(UsageError) as err:
        train(cfg)
    message = str(err.value)
    assert message.startswith("compile: ") and reg.split(":")[0] in message and "\n" not in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before training


@pytest.mark.slow
def test_a_compiled_step_trains(tmp_path):
    pytest.importorskip("torch._inductor", reason="torch.compile's inductor backend is not available")
    cfg = tiny(tmp_path, **MLP, max_train_samples=16, batch_size=16)
    compiled = train(cfg.replace(output=str(tmp_path / "compiled"), compile=True))
    plain = train(cfg)
    for name, p in plain.model.named_parameters():
        torch.testing.assert_close(compiled.model.get_parameter(name), p, rtol=1e-4, atol=1e-5)
