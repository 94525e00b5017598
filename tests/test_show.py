"""Pictures: prototypes as images on pixel-space models, nearest training images on deep ones."""

from __future__ import annotations

import matplotlib.image
import pytest
import torch

import robustproto
from robustproto.data import load_split
from robustproto.show import plot_prototypes, prototype_images


@pytest.fixture(scope="module")
def digits():
    return load_split("mnist-small", "train", max_samples=300, augment=False)


def test_pixel_space_prototypes_are_the_class_means_after_init(digits, tmp_path):
    model = robustproto.wrap("flatten", head="glvq", num_classes=10, in_chans=1, img_size=28)
    x = torch.stack([digits[i][0] for i in range(len(digits))])
    y = torch.stack([digits[i][1] for i in range(len(digits))])
    model.head.init_from_data(model.embed(x), y)
    images = prototype_images(model, (1, 28, 28))
    for c in range(10):
        assert torch.allclose(images[c], x[y == c].mean(0), atol=1e-5)
    png = plot_prototypes(model, tmp_path / "protos.png", data=digits)
    assert matplotlib.image.imread(png).shape[0] > 100


def test_deep_model_has_no_pixel_prototypes_and_shows_nearest_images(digits, tmp_path, monkeypatch):
    model = robustproto.wrap("kp_cnn_mnist", head="glvq", num_classes=10).eval()
    assert prototype_images(model, (1, 28, 28)) is None
    shown = []
    real_getitem = type(digits).__getitem__
    monkeypatch.setattr(type(digits), "__getitem__", lambda self, i: shown.append(i) or real_getitem(self, i))
    plot_prototypes(model, tmp_path / "nn.png", data=digits, neighbours=3, max_prototypes=2)
    with torch.no_grad():
        z = model.embed(torch.stack([real_getitem(digits, i)[0] for i in range(len(digits))]))
        d = robustproto.squared_euclidean(model.head.prototypes[:2], z)
    expected = d.topk(3, dim=1, largest=False).indices.flatten().tolist()
    drawn = shown[1 + len(digits):]  # after the shape probe and the embedding pass come the drawn images
    assert sorted(drawn) == sorted(expected)


def test_a_head_without_prototypes_is_a_clear_error(digits, tmp_path):
    model = robustproto.wrap("flatten", head="linear", num_classes=10, in_chans=1, img_size=28)
    with pytest.raises(ValueError, match="no prototypes to show"):
        plot_prototypes(model, tmp_path / "x.png", data=digits)
