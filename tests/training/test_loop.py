"""``robustproto.train``: multi-process equality, exact resume, Ctrl-C, NaN stops, hooks, freezing, bf16.

All runs use timm's ``test_resnet`` on a few hundred bundled MNIST images and the ``robustproto-testkit``
plugins of conftest (head ``tiny`` with observable hooks, regularizer ``probe``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from tiny_runs import BATCH, TEST, TRAIN, accuracy, tiny

import robustproto
from robustproto.checkpoint import read_jsonl, weights_sha256
from robustproto.data import load_split
from robustproto.errors import NonFiniteLossError
from robustproto.training import build_model, train


def test_torchrun_two_processes_agree_and_report_the_exact_test_accuracy(testkit, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "robustproto", "train",
           "--backbone", "test_resnet", "--head", "tiny", "--reg", "probe:weight=0.01", "--max-train-samples",
           str(TRAIN), "--max-test-samples", str(TEST), "--batch-size", "8", "--epochs", "2", "--lr", "0.01",
           "--output", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout and result.stdout.count("test accuracy:") == 1  # only rank 0 prints
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert len(record["weights_sha256"]) == 2 and len(set(record["weights_sha256"])) == 1
    model = robustproto.load(out)
    assert weights_sha256(model) == records[-1]["weights_sha256"][0]
    assert records[-1]["test_acc"] == pytest.approx(accuracy(model), abs=1e-12)
    assert records[-1]["test_acc"] > 0.3  # it learned something, so the equality is not a trivial 10 %


def test_resume_after_two_epochs_equals_an_uninterrupted_run(testkit, tmp_path):
    full = train(tiny(tmp_path, "full", epochs=3, sched="constant"))
    train(tiny(tmp_path, "parts", epochs=2, sched="constant"))
    resumed = train(tiny(tmp_path, "parts", epochs=3, sched="constant", resume=str(tmp_path / "parts")))
    assert [r["epoch"] for r in read_jsonl(tmp_path / "parts" / "metrics.jsonl")] == [1, 2, 3]
    assert weights_sha256(resumed.model) == weights_sha256(full.model)
    assert resumed.model.head.init_count.item() == 1  # the head is not re-initialised on resume
    assert resumed.model.head.steps.item() == 3 * TRAIN // BATCH


@pytest.mark.parametrize("stop_step", [31, 20], ids=["after-epoch-2", "mid-epoch-2"])
def test_ctrl_c_saves_a_state_that_resumes_exactly(testkit, tmp_path, stop_step):
    # the probe sends SIGINT to this process during step `stop_step` (0-based); the loop finishes that step
    reg = ["probe:weight=0.01"]
    full = train(tiny(tmp_path, "full", epochs=3, reg=reg))
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, "cut", epochs=3, reg=[f"probe:weight=0.01,interrupt_at_step={stop_step}"]))
    progress = json.loads((tmp_path / "cut" / "state" / "progress.json").read_text())
    assert progress["global_step"] == stop_step + 1
    resumed = train(tiny(tmp_path, "cut", epochs=3, reg=reg, resume=str(tmp_path / "cut")))
    records = read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert weights_sha256(resumed.model) == weights_sha256(full.model)
    assert records[-1]["train_loss"] == pytest.approx(full.metrics[-1]["train_loss"], rel=1e-6)


def test_ctrl_c_mid_epoch_resumes_exactly_with_augmentation_and_loader_workers(testkit, tmp_path):
    # each image's random shift/rotation is seeded by (seed, epoch, index): neither the worker that loads it nor the
    # batch Accelerate's loader fetched ahead of the checkpoint changes it (both did before)
    reg, setting = ["probe:weight=0.01"], {"epochs": 3, "workers": 2, "augment": "shift-rotate"}
    full = train(tiny(tmp_path, "full", reg=reg, **setting))
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, "cut", reg=["probe:weight=0.01,interrupt_at_step=20"], **setting))
    resumed = train(tiny(tmp_path, "cut", reg=reg, resume=str(tmp_path / "cut"), **setting))
    assert weights_sha256(resumed.model) == weights_sha256(full.model)
    single = train(tiny(tmp_path, "single", reg=reg, **{**setting, "workers": 0}))
    assert weights_sha256(single.model) == weights_sha256(full.model)  # the same images with no worker


def test_ctrl_c_mid_epoch_resumes_a_schedule_counted_in_updates_exactly(testkit, tmp_path):
    reg, setting = ["probe:weight=0.01"], {"epochs": 3, "sched": "poly", "decay_rate": 1.0, "warmup_epochs": 1,
                                           "warmup_prefix": True, "sched_on_updates": True}
    full = train(tiny(tmp_path, "full", reg=reg, **setting))
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, "cut", reg=["probe:weight=0.01,interrupt_at_step=20"], **setting))
    resumed = train(tiny(tmp_path, "cut", reg=reg, resume=str(tmp_path / "cut"), **setting))
    assert weights_sha256(resumed.model) == weights_sha256(full.model)
    # per update: after epoch 1 (16 updates, all warm-up) the peak, then down to 0 over the 32 updates after it
    assert [r["lr"] for r in full.metrics] == pytest.approx([0.01, 0.005, 0.0], abs=1e-12)


def test_head_hooks_run_once_before_and_after_every_step(testkit, tmp_path):
    result = train(tiny(tmp_path, epochs=2))
    assert result.model.head.init_count.item() == 1
    assert result.model.head.steps.item() == 2 * TRAIN // BATCH


def test_regularizer_hook(testkit, tmp_path):
    cfg = tiny(tmp_path, "reg", epochs=1, reg=["probe:weight=1.0,input_grad=True"])
    result = train(cfg)
    record = read_jsonl(tmp_path / "reg" / "metrics.jsonl")[0]
    assert record["reg/probe"] > 0 and record["reg/probe/calls"] == TRAIN // BATCH
    assert record["reg/probe/shape_ok"] == 1.0 and record["reg/probe/input_grad"] == 1.0
    # the penalty changes the gradient: the same run with weight 0 ends elsewhere
    plain = train(tiny(tmp_path, "reg0", epochs=1, reg=["probe:weight=0.0,input_grad=True"]))
    assert weights_sha256(plain.model) != weights_sha256(result.model)
    assert read_jsonl(tmp_path / "reg0" / "metrics.jsonl")[0]["reg/probe"] == 0.0


def test_freeze_backbone_epochs_trains_only_the_head(testkit, tmp_path):
    data = load_split("mnist-small", "train", max_samples=8)
    torch.manual_seed(0)
    result = train(tiny(tmp_path, epochs=1, freeze_backbone_epochs=1, seed=0))
    from accelerate.utils import set_seed

    set_seed(0)
    initial = build_model(tiny(tmp_path, seed=0), data)
    trained = result.model.backbone.state_dict()
    for name, before in initial.backbone.state_dict().items():
        assert torch.equal(before, trained[name]), name
    assert not torch.equal(initial.head.bias, result.model.head.bias)


def test_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(testkit, tmp_path):
    # 0-based step 17 is the 18th step: epoch 2, batch 2; epoch 1's state is the last good checkpoint
    with pytest.raises(NonFiniteLossError) as err:
        train(tiny(tmp_path, reg=["probe:nan_at_step=17"]))
    message = str(err.value)
    assert "step 18 (epoch 2, batch 2)" in message and "reg/probe = nan" in message
    assert str(tmp_path / "run" / "state") in message and "\n" not in message
    assert json.loads((tmp_path / "run" / "state" / "progress.json").read_text())["epoch"] == 1


def test_nan_loss_on_the_command_line_is_one_line_exit_2(testkit, tmp_path):
    cmd = [sys.executable, "-m", "robustproto", "train", "--backbone", "test_resnet", "--head", "tiny",
           "--max-train-samples", "64", "--max-test-samples", "16", "--reg", "probe:nan_at_step=0",
           "--output", str(tmp_path / "nan")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: non-finite loss at step 1") and "Traceback" not in result.stderr
    assert "none (no epoch finished yet)" in result.stderr


def test_bf16_autocast_run_keeps_float32_weights_and_trains_like_float32(testkit, tmp_path):
    first = train(tiny(tmp_path, "fp32", max_train_samples=64))  # a later run may change precision
    result = train(tiny(tmp_path, "bf16", max_train_samples=64, mixed_precision="bf16"))
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert weights_sha256(result.model) != weights_sha256(first.model)  # autocast really ran in bf16
    # the same steps in bf16 give nearly the same losses, and these fall (ln 10 ≈ 2.3 is an untrained head)
    fp32_losses = [r["train_loss"] for r in first.metrics]
    bf16_losses = [r["train_loss"] for r in result.metrics]
    assert bf16_losses == pytest.approx(fp32_losses, abs=0.05)
    assert bf16_losses[1] < bf16_losses[0] - 0.25
