"""Before the first step: pretrained backbones, models that do not fit the data, the head's init from data."""

from __future__ import annotations

import pytest
import timm
import torch
from tiny_runs import tiny

from robustproto.config import resolve_config
from robustproto.data import load_split
from robustproto.errors import UsageError
from robustproto.training import build_model, init_head_from_data, train


def test_pretrained_weights_give_the_original_embeddings(testkit, tmp_path):
    from safetensors.torch import save_file

    original = timm.create_model("test_resnet", num_classes=10, in_chans=1).eval()
    file = tmp_path / "backbone.safetensors"
    save_file(original.state_dict(), str(file))  # with its classifier, as timm checkpoints come
    torch.save(original.state_dict(), tmp_path / "backbone.pth")
    data = load_split("mnist-small", "train", max_samples=8)
    x = torch.stack([data[i][0] for i in range(8)])
    with torch.no_grad():
        expected = original.forward_head(original.forward_features(x), pre_logits=True)
    for path in (file, tmp_path / "backbone.pth"):
        model = build_model(tiny(tmp_path, pretrained_weights=str(path)), data).eval()
        with torch.no_grad():
            assert torch.allclose(model.backbone(x), expected, atol=1e-6)
    fresh = build_model(tiny(tmp_path), data).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh.backbone(x), expected, atol=1e-3)


def test_pretrained_weights_of_another_architecture_are_rejected(testkit, tmp_path):
    from safetensors.torch import save_file

    save_file(timm.create_model("test_efficientnet", num_classes=0).state_dict(), str(tmp_path / "other.safetensors"))
    data = load_split("mnist-small", "train", max_samples=8)
    with pytest.raises(ValueError, match="pretrained_weights: .*does not fit"):
        build_model(tiny(tmp_path, pretrained_weights=str(tmp_path / "other.safetensors")), data)


@pytest.mark.parametrize("overrides, words", [
    ({"backbone": "test_vit"}, "1×28×28"),
    ({"backbone_opt": ["in_chans=3"]}, "(B, 3, H, W)"),
])
def test_a_model_that_does_not_fit_the_data_fails_before_training(testkit, tmp_path, overrides, words):
    with pytest.raises(ValueError) as err:
        train(tiny(tmp_path, **overrides))
    assert isinstance(err.value, UsageError) and isinstance(err.value.__cause__, Exception)  # the cause is kept
    assert words in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_head_init_leaves_batchnorm_statistics_untouched(testkit, tmp_path):
    cfg = tiny(tmp_path, init_samples=64)
    data = load_split("mnist-small", "train", max_samples=64)
    model = build_model(cfg, data)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    assert init_head_from_data(model, data, cfg.init_samples, cfg.batch_size * 2)
    assert model.head.init_count.item() == 1 and model.head.weight.abs().sum() > 0 and model.training
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_head_init_skips_a_head_without_the_hook_and_keeps_every_module_mode(testkit, tmp_path):
    data = load_split("mnist-small", "train", max_samples=16)
    model = build_model(tiny(tmp_path, head="linear"), data)
    assert not model.head.supports_init_from_data and not init_head_from_data(model, data)
    model = build_model(tiny(tmp_path), data)
    model.backbone.eval()  # a frozen backbone inside a training model stays frozen
    modes = {name: m.training for name, m in model.named_modules()}
    assert init_head_from_data(model, data, batch_size=8)
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_glvq_on_pixels_starts_from_class_means_and_training_improves_on_them(tmp_path):
    # the built-in flatten backbone and glvq head: class-mean prototypes are a good classifier before the first
    # step, and one epoch of training lowers the GLVQ loss and raises the accuracy on the training set
    from accelerate.utils import set_seed

    cfg = resolve_config({"backbone": "flatten", "head": "glvq", "max_train_samples": 1000, "max_test_samples": 500,
                          "epochs": 1, "lr": 0.01, "output": str(tmp_path / "glvq")})
    train_data = load_split("mnist-small", "train", max_samples=1000)
    test_data = load_split("mnist-small", "test", max_samples=500)
    set_seed(cfg.seed)  # as train() does before it builds the model
    initial = build_model(cfg, train_data)
    init_head_from_data(initial, train_data, cfg.init_samples, cfg.batch_size * 2)
    result = train(cfg)

    def loss_and_accuracy(model, data):
        model.eval()
        with torch.no_grad():
            z = model.embed(data.images.float() / 255)
            scores = model.head(z)
            return float(model.head.loss(z, scores, data.labels)), float((scores.argmax(1) == data.labels).mean(
                dtype=torch.float32))

    (loss0, train_acc0), (loss1, train_acc1) = (loss_and_accuracy(m, train_data) for m in (initial, result.model))
    (test_loss0, test_acc0), (test_loss1, test_acc1) = (loss_and_accuracy(m, test_data)
                                                        for m in (initial, result.model))
    assert test_acc0 >= 0.7  # the class-mean init alone (measured 0.77)
    assert loss1 < loss0 - 0.03 and test_loss1 < test_loss0 - 0.02  # measured -0.113 → -0.159, -0.102 → -0.141
    assert train_acc1 > train_acc0 + 0.02  # measured 0.811 → 0.846
    assert test_acc1 >= test_acc0 - 0.02 and result.test_acc == pytest.approx(test_acc1)  # not lost on test data
