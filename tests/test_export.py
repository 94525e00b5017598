"""``robustproto export``: a run as a Hugging Face folder that plain timm (linear head) and robustproto load with the
run's scores, a model card with the run's results, and the one-line errors of the folder and of the upload."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import timm
import torch
import yaml

import robustproto
from robustproto.config import resolve_config
from robustproto.data import load_split
from robustproto.errors import UsageError

RUNS = {
    "mlp": {"backbone": "mlp", "backbone_opt": {"width": 32}, "head": "linear"},  # a backbone robustproto registers
    "neck": {"backbone": "test_resnet", "head": "linear", "embed_dim": 8},  # a plain timm one, a linear neck
    "glvq": {"backbone": "mlp", "backbone_opt": {"width": 32}, "head": "glvq"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trained runs (1 epoch on 64 bundled MNIST images) by name; ``mlp`` also holds an eval and a certify
    report."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name, layer in RUNS.items():
        cfg = resolve_config({**layer, "max_train_samples": 64, "max_test_samples": 16, "batch_size": 16,
                              "epochs": 1, "output": str(root / name)})
        robustproto.train(cfg)
        out[name] = root / name
    model = robustproto.load(out["mlp"])
    data = _images()
    report = robustproto.evaluate(model, data, attacks=["fgsm"], eps=[0.1], norm="Linf", dataset_name="mnist-small")
    robustproto.write_report(report, out["mlp"] / "report.json")
    cert = robustproto.certify(model, data, radii=[0.0, 0.1], tightness_samples=0, dataset_name="mnist-small")
    robustproto.write_report(cert, out["mlp"] / "cert.json")
    return out


def _images(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_split("mnist-small", "test", max_samples=n)
    return torch.stack([data[i][0] for i in range(n)]), data.labels[:n]


def _timm_scores(folder, x: torch.Tensor) -> torch.Tensor:
    """What a timm user does: the model from the folder, the images normalised by its resolved data config."""
    net = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    cfg = timm.data.resolve_data_config({}, model=net)
    assert cfg["input_size"] == tuple(x.shape[1:]) and cfg["crop_pct"] == 1.0  # its transforms keep the image as is
    mean, std = (torch.tensor(cfg[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        return net((x - mean) / std)


def _front_matter(folder) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.mark.parametrize("name", ["mlp", "neck"])
def test_a_linear_head_loads_in_timm_with_the_runs_scores(runs, tmp_path, name):
    robustproto.load_backbones()  # what a user of a robustproto-registered backbone (mlp) does before timm
    result = robustproto.export(runs[name], tmp_path / "hf")
    assert result["timm_loadable"] and result["folder"] == tmp_path / "hf"
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    x, _ = _images()
    model = robustproto.load(runs[name])
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(_timm_scores(tmp_path / "hf", x), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(robustproto.load(tmp_path / "hf")(x), expected, rtol=1e-5, atol=1e-5)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architecture"] == RUNS[name]["backbone"] and config["num_classes"] == 10
    assert config["pretrained_cfg"]["mean"] == model.spec["mean"] and config["pretrained_cfg"]["std"] == model.spec["std"]
    assert config["robustproto"]["train_config"]["head"] == "linear"


def test_the_folded_neck_is_gone_from_the_reloaded_model(runs, tmp_path):
    robustproto.export(runs["neck"], tmp_path / "hf")
    assert isinstance(robustproto.load(runs["neck"]).neck, torch.nn.Linear)
    reloaded = robustproto.load(tmp_path / "hf")
    assert isinstance(reloaded.neck, torch.nn.Identity) and reloaded.embed_dim == reloaded.backbone.num_features


def test_plain_timm_loads_it_without_robustproto(runs, tmp_path):
    # a fresh interpreter that never imports robustproto: config.json's extra key and the metadata stay out of its way
    robustproto.export(runs["neck"], tmp_path / "hf")
    x, _ = _images(4)
    torch.save(x, tmp_path / "x.pt")
    script = ("import sys, timm, torch; net = timm.create_model('local-dir:' + sys.argv[1], pretrained=True).eval(); "
              "c = net.pretrained_cfg; x = torch.load(sys.argv[2]); "
              "m, s = (torch.tensor(c[k]).view(1, -1, 1, 1) for k in ('mean', 'std')); "
              "torch.save(net((x - m) / s).detach(), sys.argv[3]); assert 'robustproto' not in sys.modules")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "hf"), str(tmp_path / "x.pt"),
                    str(tmp_path / "scores.pt")], check=True, timeout=300)
    with torch.no_grad():
        expected = robustproto.load(runs["neck"])(x)
    torch.testing.assert_close(torch.load(tmp_path / "scores.pt"), expected, rtol=1e-5, atol=1e-5)


def test_a_prototype_head_reloads_with_robustproto_only(runs, tmp_path):
    result = robustproto.export(runs["glvq"], tmp_path / "hf")
    assert not result["timm_loadable"] and "glvq" in result["not_timm_because"]
    x, _ = _images()
    with torch.no_grad():
        assert torch.equal(robustproto.load(tmp_path / "hf")(x), robustproto.load(runs["glvq"])(x))
    front = _front_matter(tmp_path / "hf")
    assert "library_name" not in front and "model-index" not in front  # no report in this run folder
    assert "timm cannot load this model" in (tmp_path / "hf" / "README.md").read_text()


def test_the_model_card_carries_the_reports_with_their_settings(runs, tmp_path):
    robustproto.export(runs["mlp"], tmp_path / "hf")
    report = json.loads((runs["mlp"] / "report.json").read_text())
    cert = json.loads((runs["mlp"] / "cert.json").read_text())
    front = _front_matter(tmp_path / "hf")
    assert front["library_name"] == "timm"
    (index,) = front["model-index"]
    assert index["name"] == "hf"
    by_type = {}
    for result in index["results"]:
        assert result["task"]["type"] == "image-classification"
        assert result["dataset"]["type"] == "mnist" and result["dataset"]["split"] == "test"
        for metric in result["metrics"]:
            by_type.setdefault(metric["type"], []).append(metric)
    assert {"name": "clean accuracy", "type": "accuracy", "value": report["clean_accuracy"]} in by_type["accuracy"]
    (fgsm,) = by_type["robust_accuracy"]
    assert fgsm["name"] == "fgsm (Linf, eps=0.1)" and fgsm["value"] == report["results"][0]["robust_accuracy"]
    assert fgsm["args"]["attack"] == "fgsm" and fgsm["args"]["norm"] == "Linf" and fgsm["args"]["eps"] == 0.1
    assert fgsm["args"]["loss"] == report["results"][0]["loss"]
    certified = {m["name"]: m["value"] for m in by_type["certified_accuracy"]}
    assert certified == {f"certified accuracy (L2, radius={r})": v for r, v in cert["certified_accuracy"].items()}
    hub = pytest.importorskip("huggingface_hub")
    card = hub.ModelCard((tmp_path / "hf" / "README.md").read_text())  # the Hub client reads the same results
    assert len(card.data.eval_results) == sum(len(r["metrics"]) for r in index["results"])


def test_an_unfinished_report_never_reaches_a_model_card(runs, tmp_path):
    report = json.loads((runs["mlp"] / "report.json").read_text())
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({**report, "unfinished": ["autoattack/Linf"]}))
    with pytest.raises(UsageError, match="partial.json is unfinished .not run: autoattack/Linf."):
        robustproto.export(runs["mlp"], tmp_path / "hf", reports=[partial])
    assert not (tmp_path / "hf").exists()


def test_a_non_empty_folder_is_refused_unless_forced(runs, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty; pass --force"):
        robustproto.export(runs["glvq"], out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    robustproto.export(runs["glvq"], out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temporary folder left
    with pytest.raises(UsageError, match="holds the run folder"):
        robustproto.export(runs["glvq"], runs["glvq"], force=True)


def test_push_without_network_is_one_line(runs, tmp_path, monkeypatch, capsys):
    hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to establish a new connection: [Errno 101] Network is unreachable")

    monkeypatch.setattr(hub.HfApi, "create_repo", offline)
    code, err = _main(["export", str(runs["glvq"]), str(tmp_path / "hf"), "--push-to-hub", "me/glvq"],
                      monkeypatch, capsys)
    assert code == 2 and err.startswith("error: push_to_hub: cannot upload") and err.count("\n") == 1, err
    assert "ConnectionError" in err and "Traceback" not in err
    assert (tmp_path / "hf" / "model.safetensors").is_file()  # the folder is written before the upload


def test_push_without_huggingface_hub_names_the_install(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # what `import huggingface_hub` sees when not installed
    with pytest.raises(UsageError, match="pip install huggingface_hub"):
        robustproto.export(runs["glvq"], tmp_path / "hf", push_to_hub="me/glvq")


def test_the_command_writes_the_folder(runs, tmp_path, monkeypatch, capsys):
    from typer.testing import CliRunner

    from robustproto.cli import app

    result = CliRunner().invoke(app, ["export", str(runs["mlp"]), str(tmp_path / "hf"),
                                      "--report", str(runs["mlp"] / "report.json")])
    assert result.exit_code == 0, result.output
    assert "1 report(s)" in result.output and "local-dir:" in result.output
    (index,) = _front_matter(tmp_path / "hf")["model-index"]
    assert len(index["results"]) == 1
    code, err = _main(["export", str(runs["mlp"]), str(tmp_path / "hf")], monkeypatch, capsys)
    assert code == 2 and "not empty" in err and err.count("\n") == 1, err


def _main(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Exit code and stderr of ``robustproto ARGV`` run in this process through ``robustproto.cli.main``."""
    from robustproto.cli import main

    monkeypatch.setattr(sys, "argv", ["robustproto", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err
