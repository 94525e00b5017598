"""Adversarial training as regularizers: pgd-at, fgsm-rs, trades (options, the inner attack, training, DDP)."""

from __future__ import annotations

import pytest
import torch

import robustproto
from robustproto import attack_loss, create_regularizer
from robustproto.data import load_split
from robustproto.errors import UsageError
from robustproto.regularizer import BatchContext
from robustproto.training import TrainStep, compute_losses
from robustproto_plugins.regularizers.adversarial import _kl
from test_regularizers import DDP_PREAMBLE, torchrun

NAMES = ("pgd-at", "fgsm-rs", "trades")
EPS = 0.1


@pytest.fixture
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    yield Accelerator()
    AcceleratorState._reset_state()


def mnist(n=32):
    data = load_split("mnist-small", "train", max_samples=n)
    return torch.stack([data[i][0] for i in range(n)]), data.labels[:n]


def model_of(head="linear", **kwargs):
    torch.manual_seed(0)
    return robustproto.wrap("kp_cnn_mnist", head=head, num_classes=10, **kwargs)


def adversarial_examples(reg, model, x, y, epoch=0.0):
    """The images the plugin's prepare_batch made: returned (replaces_inputs) or stashed as extra inputs."""
    out = reg.prepare_batch(BatchContext(x=x, y=y, model=model, step=0, epoch=epoch))
    return out if reg.replaces_inputs else reg.extra_inputs(x)


@pytest.mark.parametrize("name", NAMES)
def test_registered_and_options_checked(name):
    reg = create_regularizer(name, eps="8/255")
    assert reg.eps == pytest.approx(8 / 255) and reg.current_eps == pytest.approx(8 / 255)
    with pytest.raises(UsageError, match="rejected its options"):
        create_regularizer(name, bogus=1)
    for bad in ({"eps": "a/b"}, {"eps": -0.1}, {"eps": "0.1,0.2"}, {"warmup_epochs": -1}):
        with pytest.raises(UsageError, match="eps|warmup_epochs"):
            create_regularizer(name, **bad)
    with pytest.raises(UsageError, match="norm"):
        create_regularizer(name, norm="L1")


def test_option_specifics():
    assert create_regularizer("pgd-at").attack_settings(8 / 255) == {
        "alpha": pytest.approx(2.5 * (8 / 255) / 10), "steps": 10, "random_start": True}
    assert create_regularizer("fgsm-rs", eps=0.1).attack_settings(0.1)["alpha"] == pytest.approx(0.125)
    assert create_regularizer("trades", eps=0.1).attack_settings(0.1)["alpha"] == pytest.approx(0.025)
    with pytest.raises(UsageError, match="Linf"):
        create_regularizer("fgsm-rs", norm="L2")
    madry, mixed = create_regularizer("pgd-at"), create_regularizer("pgd-at", clean_weight=0.5)
    assert (madry.replaces_inputs, madry.clean_weight) == (True, 1.0)  # the head's loss on x_adv is the objective
    assert (mixed.replaces_inputs, mixed.clean_weight) == (False, 0.5)
    assert create_regularizer("fgsm-rs").replaces_inputs and not create_regularizer("trades").replaces_inputs
    assert create_regularizer("trades").beta == 6.0 and create_regularizer("trades", beta=1).beta == 1.0


def test_warmup_ramps_eps_linearly_and_shrinks_the_step():
    reg = create_regularizer("pgd-at", eps=0.2, warmup_epochs=2, steps=4)
    assert [reg.eps_at(e) for e in (0, 0.5, 1, 2, 3.5)] == pytest.approx([0, 0.05, 0.1, 0.2, 0.2])
    assert reg.attack_settings(0.1)["alpha"] == pytest.approx(2.5 * 0.2 / 4 / 2)
    model, (x, y) = model_of(), mnist(4)
    assert torch.equal(adversarial_examples(reg, model, x, y, epoch=0.0), x)  # ε = 0: the batch itself
    adversarial_examples(reg, model, x, y, epoch=1.0)
    assert reg.metrics()["eps"] == pytest.approx(0.1)


def test_loss_auto_resolves_per_head():
    from robustproto_plugins.regularizers.adversarial import resolve_loss

    assert resolve_loss("auto", model_of("linear")) == "ce"
    assert resolve_loss("auto", model_of("glvq")) == "margin"
    assert resolve_loss("margin", model_of("linear")) == "margin"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("head", ["linear", "glvq"])
def test_adversarial_examples_stay_in_the_ball_and_raise_the_loss(name, head):
    model, (x, y) = model_of(head), mnist(32)
    reg = create_regularizer(name, eps=EPS)
    adv = adversarial_examples(reg, model.train(), x, y)
    assert adv.shape == x.shape and not adv.requires_grad
    assert float((adv - x).abs().max()) <= EPS + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert float((adv - x).abs().max()) > EPS / 2
    model.eval()
    with torch.no_grad():
        clean, attacked = model(x), model(adv)
        if name == "trades":  # it ascends KL(p(x) ‖ p(x_adv)): more than a random point of the ball reaches
            noise = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
            assert float(_kl(clean, attacked).mean()) > 2 * float(_kl(clean, model(noise)).mean())
        else:
            loss = "ce" if head == "linear" else "margin"  # what loss="auto" ascends for this head
            assert float(attack_loss(attacked, y, loss)) > float(attack_loss(clean, y, loss)) + 0.01


def test_pgd_at_l2_stays_in_the_l2_ball():
    model, (x, y) = model_of(), mnist(8)
    adv = adversarial_examples(create_regularizer("pgd-at", eps=1.0, norm="L2", steps=3), model, x, y)
    assert float((adv - x).flatten(1).norm(dim=1).max()) <= 1.0 + 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_the_inner_attack_leaves_batchnorm_statistics_modes_and_gradients_alone(name):
    model = model_of("glvq", batch_norm=True, drop_rate=0.5).train()
    model.backbone.convs[1].eval()  # a frozen BatchNorm inside a training model must stay frozen
    x, y = mnist(16)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    modes = {n: m.training for n, m in model.named_modules()}
    adversarial_examples(create_regularizer(name, eps=EPS), model, x, y)
    assert all(torch.equal(v, dict(model.named_buffers())[k]) for k, v in buffers.items())
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())  # input gradients only


def test_pgd_at_through_compute_losses(accelerator):
    model, (x, y) = model_of(), mnist(8)
    model.eval()  # so the losses can be recomputed exactly
    step = TrainStep(model)
    torch.manual_seed(3)
    madry = compute_losses(step, model, {"pgd-at": create_regularizer("pgd-at", eps=EPS)}, x, y, 0, accelerator)
    torch.manual_seed(3)
    adv = adversarial_examples(create_regularizer("pgd-at", eps=EPS), model, x, y)
    with torch.no_grad():
        assert torch.allclose(madry.loss, model.head.loss(None, model(adv), y), atol=1e-5)
        assert float(madry.penalties["pgd-at"]) == 0 and madry.clean_weight == 1.0
        torch.manual_seed(3)
        mixed = compute_losses(step, model, {"pgd-at": create_regularizer("pgd-at", eps=EPS, clean_weight=0.5)},
                               x, y, 0, accelerator)
        assert torch.allclose(mixed.loss, model.head.loss(None, model(x), y), atol=1e-5)  # the clean batch
        assert torch.allclose(mixed.penalties["pgd-at"], madry.loss, atol=1e-5)  # the same x_adv, as extra input
        assert torch.allclose(mixed.total, 0.5 * mixed.loss + madry.loss, atol=1e-5)


def test_trades_penalty_is_beta_times_the_kl(accelerator):
    model, (x, y) = model_of("glvq"), mnist(8)
    model.eval()
    reg = create_regularizer("trades", eps=EPS, beta=2.0)
    torch.manual_seed(4)
    losses = compute_losses(TrainStep(model), model, {"trades": reg}, x, y, 0, accelerator)
    torch.manual_seed(4)
    adv = adversarial_examples(create_regularizer("trades", eps=EPS), model, x, y)
    with torch.no_grad():
        assert torch.allclose(losses.penalties["trades"], 2.0 * _kl(model(x), model(adv)).mean(), rtol=1e-4)
    assert 0 <= reg.metrics()["fooled"] <= 1


def test_two_replacing_regularizers_are_refused_at_setup(tmp_path):
    from robustproto.config import resolve_config
    from robustproto.training.setup import create_regularizers

    cfg = resolve_config({"backbone": "kp_cnn_mnist", "head": "glvq", "reg": ["pgd-at", "fgsm-rs"],
                          "output": str(tmp_path / "run")})
    with pytest.raises(UsageError, match="at most one regularizer may replace.*pgd-at, fgsm-rs"):
        create_regularizers(cfg, model_of("glvq"))
    cfg = resolve_config({"backbone": "kp_cnn_mnist", "head": "glvq", "reg": ["pgd-at:clean_weight=1", "fgsm-rs"],
                          "output": str(tmp_path / "run")})
    assert list(create_regularizers(cfg, model_of("glvq"))) == ["pgd-at", "fgsm-rs"]


# --- training: robustness beyond the plain run -----------------------------------------------------------------

TRAIN_EPS = 0.1


def robust_run(tmp_path, reg, epochs=2):
    from robustproto.config import resolve_config

    cfg = resolve_config({"backbone": "flatten", "head": "linear", "dataset": "mnist-small",
                          "max_train_samples": 512, "max_test_samples": 200, "batch_size": 32, "epochs": epochs,
                          "lr": 0.05, "seed": 0, "reg": reg, "output": str(tmp_path / (reg[0].split(":")[0]
                                                                                          if reg else "plain"))})
    result = robustproto.train(cfg)
    test = load_split("mnist-small", "test", max_samples=200)
    report = robustproto.evaluate(result.model, test, attacks=["pgd-10"], eps=[TRAIN_EPS], log=lambda s: None)
    return result, report


def robust_accuracy(report):
    (row,) = [r for r in report["results"] if r["attack"] == "pgd-10" and r["eps"] == TRAIN_EPS]
    return row["robust_accuracy"]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    return robust_run(tmp_path_factory.mktemp("plain"), [])


@pytest.mark.parametrize("reg", [f"pgd-at:eps={TRAIN_EPS},steps=5", f"fgsm-rs:eps={TRAIN_EPS}",
                                 f"trades:eps={TRAIN_EPS},beta=1.0"])
def test_adversarial_training_learns_and_is_more_robust_than_plain_training(reg, plain_run, tmp_path):
    plain, plain_report = plain_run
    result, report = robust_run(tmp_path, [reg])
    name = reg.split(":")[0]
    first, last = result.metrics[0], result.metrics[-1]
    assert report["clean_accuracy"] > 0.5  # learnt beyond the initialisation (chance: 0.1)
    assert last["train_loss"] < first["train_loss"] if "train_loss" in last else True
    assert last[f"reg/{name}/eps"] == pytest.approx(TRAIN_EPS) and 0 <= last[f"reg/{name}/fooled"] <= 1
    assert robust_accuracy(report) > robust_accuracy(plain_report) + 0.1, (report["results"],
                                                                            plain_report["results"])


# --- DDP: two processes, the same gradients as one ---------------------------------------------------------------

# the set-up of test_regularizers' worker (process group, model, its copy, the global batch), then the plugins
DDP_WORKER = DDP_PREAMBLE + '''
import contextlib
from robustproto.training import compute_losses


class NoAccelerator:
    def autocast(self):
        return contextlib.nullcontext()


def gradients(module, net, reg, rows, skip):
    # random starts: seed the global RNG alike, and let rank 1 skip the draws rank 0 makes for its half (the CPU
    # generator fills a tensor in order, so the single process's draw for 8 samples is rank 0's then rank 1's)
    torch.manual_seed(5)
    if skip:
        torch.empty(skip).uniform_()
    for p in net.parameters():
        p.grad = None
    losses = compute_losses(module, net, {"adv": reg}, x[rows], y[rows], 0, NoAccelerator())
    losses.total.backward()
    return torch.cat([p.grad.flatten() for p in net.parameters()])


ddp = DistributedDataParallel(TrainStep(model))
half = len(x) // world
for spec in sys.argv[1:]:
    name, _, opts = spec.partition(":")
    options = dict(kv.split("=") for kv in opts.split(",") if kv)
    options = {k: eval(v) for k, v in options.items()}
    together = gradients(ddp, model, create_regularizer(name, eps=0.1, **options),
                         slice(rank * half, (rank + 1) * half), rank * half * 144)
    alone = gradients(TrainStep(single), single, create_regularizer(name, eps=0.1, **options), slice(None), 0)
    error = float((together - alone).abs().max() / alone.abs().max())
    print(f"rank {rank} {spec} relative error {error:.2e}", flush=True)
    if not error < 1e-5:
        sys.exit(1)
'''

DDP_SPECS = ["pgd-at:random_start=False,steps=3", "pgd-at:clean_weight=0.5,steps=3,random_start=False",
             "fgsm-rs", "trades:steps=3"]


def test_two_process_gradients_equal_one_process_gradients(tmp_path):
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    result = torchrun(["worker.py", *DDP_SPECS], tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("relative error") == 2 * len(DDP_SPECS)
