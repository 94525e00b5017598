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


@pytest.fixture(scope="module")
def glvq_run(tmp_path_factory):
    """A GLVQ model on the bundled MNIST pixels, trained for one short epoch."""
    out = tmp_path_factory.mktemp("glvq_run")
    robustproto.train(robustproto.TrainConfig(backbone="flatten", head="glvq", dataset="mnist-small", epochs=1,
                                              max_train_samples=300, max_test_samples=100, output=str(out)))
    return out


def test_run_data_is_the_runs_own_training_subset_without_augmentation(glvq_run):
    from robustproto.show import run_data

    data = run_data(glvq_run)
    assert data.name == "mnist-small" and len(data) == 300 and data.augment is None
    assert len(run_data(glvq_run, "test")) == 100
    assert len(run_data(glvq_run, max_samples=50)) == 50


def test_show_prototypes_cli_draws_the_trained_prototypes(glvq_run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import robustproto.show as show
    from robustproto.cli import app

    drawn = {}
    real = show.plot_prototypes
    monkeypatch.setattr(show, "plot_prototypes", lambda model, path, data, **kw: drawn.update(
        model=model, n=len(data)) or real(model, path, data=data, **kw))
    result = CliRunner().invoke(app, ["show", "prototypes", "--model", str(glvq_run), "--out",
                                      str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert drawn["n"] == 300
    assert torch.equal(drawn["model"].head.prototypes, robustproto.load(glvq_run).head.prototypes)
    assert matplotlib.image.imread(tmp_path / "p.png").shape[1] > 500  # ten cells side by side


def test_show_prototypes_on_a_missing_run_is_a_one_line_error(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "robustproto", "show", "prototypes", "--model",
                             str(tmp_path / "nope")], capture_output=True, text=True)
    assert result.returncode == 2 and "no model checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_adversarial_rows_stay_within_budget_and_flip_predictions(glvq_run):
    from robustproto.show import adversarial_rows, run_data

    model = robustproto.load(glvq_run)
    data = run_data(glvq_run, "test")
    rows = adversarial_rows(model, data, ["fgsm"], [0.0, 0.3], norm="Linf", n_images=6)
    (_, clean, clean_pred, _, y), (label0, at0, pred0, _, _), (label3, at3, pred3, _, _) = rows
    assert len(y) == 6 and torch.equal(clean_pred, y)  # only correctly classified images are shown
    assert "ε=0" in label0 and torch.equal(at0, clean) and torch.equal(pred0, y)
    assert (at3 - clean).abs().amax() <= 0.3 + 1e-5 and at3.min() >= 0 and at3.max() <= 1
    with torch.no_grad():
        assert torch.equal(model(at3).argmax(1), pred3)
    assert (pred3 != y).any()  # GLVQ on pixels falls to FGSM at 0.3 (Saralajew et al.: median-δ .17)
    changed = (at3 != clean).flatten(1).any(1)
    assert torch.equal(changed, pred3 != y)  # an image is replaced only by a verified adversarial

    (_, df, df_pred, df_dist, _) = adversarial_rows(model, data, ["deepfool"], [], norm="L2", n_images=6)[1]
    found = torch.isfinite(df_dist)
    assert found.any() and torch.equal(found, df_pred != y)
    assert torch.allclose((df - clean).flatten(1).norm(dim=1)[found].double(), df_dist[found], atol=1e-4)


def test_show_adversarial_cli_writes_a_grid_and_rejects_bad_input(glvq_run, tmp_path):
    from typer.testing import CliRunner

    from robustproto.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["show", "adversarial", "--model", str(glvq_run), "--attack", "fgsm", "--attack",
                                 "bim", "--eps", "0.1,0.3", "--n-images", "4", "--out", str(tmp_path / "a.png")])
    assert result.exit_code == 0, result.output
    height, width = matplotlib.image.imread(tmp_path / "a.png").shape[:2]
    assert height > 4 * 100 and width > 4 * 100  # 5 rows (clean + 2 attacks × 2 ε) of 4 images
    result = runner.invoke(app, ["show", "adversarial", "--model", str(glvq_run), "--attack", "deepfool",
                                 "--norm", "Linf", "--out", str(tmp_path / "b.png")])
    assert isinstance(result.exception, ValueError) and "works in L2, not Linf" in str(result.exception)


def _report(model, accuracies, attack="fgsm", norm="Linf"):
    return {"model": model, "dataset": "mnist", "n_samples": 10,
            "results": [{"attack": attack, "norm": norm, "eps": e, "robust_accuracy": a, "seconds": 0.0}
                        for e, a in zip((0.0, 0.1, 0.2), accuracies)]}


def test_curves_of_several_reports_share_the_axes_one_line_per_model():
    from robustproto import robustness_figure

    (ax,) = robustness_figure([_report("a", (0.9, 0.5, 0.1)), _report("b", (0.8, 0.7, 0.6))], labels=["GLVQ", "Lip"]).axes
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines == {"GLVQ": [0.9, 0.5, 0.1], "Lip": [0.8, 0.7, 0.6]}
    two = robustness_figure([_report("a", (0.9, 0.5, 0.1)), _report("b", (0.8, 0.7, 0.6), attack="pgd")])
    assert {line.get_label() for line in two.axes[0].get_lines()} == {"a: fgsm", "b: pgd"}
    panels = robustness_figure([_report("a", (0.9, 0.5, 0.1)), _report("a", (0.9, 0.8, 0.7), "fgm", "L2")]).axes
    assert [ax.get_xlabel() for ax in panels] == ["ε (L2, pixel units)", "ε (Linf, pixel units)"]


def test_show_curves_cli_reads_eval_reports(tmp_path):
    import json

    from typer.testing import CliRunner

    from robustproto.cli import app
    from robustproto.errors import UsageError

    paths = []
    for name, acc in (("m1", (0.9, 0.5, 0.1)), ("m2", (0.8, 0.7, 0.6))):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(_report(name, acc)))
    runner = CliRunner()
    result = runner.invoke(app, ["show", "curves", *map(str, paths), "--out", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    assert matplotlib.image.imread(tmp_path / "c.png").shape[:2] == (480, 640)
    result = runner.invoke(app, ["show", "curves", *map(str, paths), "--label", "only-one"])
    assert isinstance(result.exception, UsageError) and "one per report" in str(result.exception)
    (tmp_path / "bad.json").write_text('{"model": "x"}')
    result = runner.invoke(app, ["show", "curves", str(tmp_path / "bad.json")])
    assert isinstance(result.exception, UsageError) and "not a report" in str(result.exception)


def test_pictures_leave_every_module_in_the_mode_it_had(digits, tmp_path):
    from robustproto.show import adversarial_rows

    model = robustproto.wrap("kp_cnn_mnist", head="glvq", num_classes=10, drop_rate=0.5).train()
    model.backbone.eval()  # mixed modes: a frozen backbone inside a training model
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plot_prototypes(model, tmp_path / "nn.png", data=digits, neighbours=2, max_prototypes=2)
    assert {name: m.training for name, m in model.named_modules()} == modes
    x = torch.stack([digits[i][0] for i in range(16)])
    with torch.no_grad():
        y = model.eval()(x).argmax(1)  # correctly classified by construction
    model.train()
    model.backbone.eval()
    adversarial_rows(model, (x, y), ["fgsm"], [0.1], n_images=4)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
