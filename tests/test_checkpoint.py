"""Run folders: atomic files, safetensors metadata, robustproto.load and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import robustproto
from robustproto.checkpoint import read_metadata, weights_sha256, write_json
from robustproto.utils import atomic_write
from robustproto.config import resolve_config
from robustproto.errors import MissingFileError, UsageError
from robustproto.registry import PluginError


@pytest.fixture(scope="module")
def run(testkit, tmp_path_factory):
    """One tiny trained run: (output folder, TrainResult)."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = resolve_config({"backbone": "test_resnet", "head": "tiny", "max_train_samples": 64,
                          "max_test_samples": 16, "batch_size": 16, "epochs": 1, "output": str(out)})
    return out, robustproto.train(cfg)


def test_run_folder_holds_weights_config_and_metrics(run):
    out, result = run
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl", "model.safetensors", "state"]
    assert json.loads((out / "config.json").read_text())["head"] == "tiny"
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"epoch", "train_loss", "train_acc", "test_acc", "seconds", "images_per_second"} <= set(record)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_metadata_carries_config_spec_version_and_plugin_sources(run):
    out, _ = run
    meta = read_metadata(out)
    assert meta["robustproto_version"] == robustproto.__version__
    assert meta["config"]["backbone"] == "test_resnet" and meta["spec"]["backbone_kwargs"] == {"in_chans": 1}
    assert meta["plugins"]["head"] == {"name": "tiny", "source": "robustproto-testkit 0.1"}


def test_load_rebuilds_the_trained_model(run):
    out, result = run
    model = robustproto.load(out)
    assert not model.training and weights_sha256(model) == weights_sha256(result.model)
    x = torch.rand(4, 1, 28, 28)
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), result.model(x))
    assert weights_sha256(robustproto.load(out / "model.safetensors")) == weights_sha256(model)


def test_missing_and_corrupt_checkpoints_are_one_line_errors(run, tmp_path):
    out, _ = run
    with pytest.raises(FileNotFoundError, match="no model checkpoint") as missing:
        robustproto.load(tmp_path)
    assert isinstance(missing.value, MissingFileError)
    bad = tmp_path / "bad"
    bad.mkdir()
    data = (out / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated, as after a full disk
    with pytest.raises(ValueError) as err:
        robustproto.load(bad)
    assert "corrupt" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, UsageError) and err.value.__cause__ is not None  # the reader's error is kept
    (bad / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="corrupt"):
        robustproto.load(bad)


def test_plain_safetensors_file_is_not_mistaken_for_a_model(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="not a robustproto checkpoint"):
        robustproto.load(tmp_path)


def test_missing_plugin_names_the_distribution_to_install(run):
    out, _ = run
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the testkit is not installed there
    code = ("import robustproto\ntry:\n    robustproto.load(r'%s')\nexcept robustproto.PluginError as e:\n"
            "    print(e)\n" % out)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "unknown head 'tiny'" in result.stdout and "robustproto-testkit 0.1" in result.stdout, result.stderr
    assert issubclass(PluginError, LookupError)


def test_resume_without_a_state_is_a_clear_error(tmp_path):
    from robustproto.cli import app
    from typer.testing import CliRunner

    (tmp_path / "config.json").write_text(json.dumps({"epochs": 2}))
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path)])
    assert isinstance(result.exception, FileNotFoundError) and "no complete training state" in str(result.exception)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "config.json"
    write_json(target, {"a": 1})

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("{half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_weights_hash_sees_buffers(run):
    _, result = run
    model = robustproto.load(run[0])
    before = weights_sha256(model)
    model.head.steps += 1
    assert weights_sha256(model) != before


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os

    from robustproto.checkpoint import write_json

    write_json(tmp_path / "x.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~mask
