"""``log_with``: experiment trackers through Accelerate log every ``metrics.jsonl`` metric at its epoch.

Tiny runs as in test_loop (timm's ``test_resnet``, the testkit's head ``tiny`` and regularizer ``probe``, whose
``metrics()`` give ``reg/probe/<key>`` records). TensorBoard's event files are read back with its own
``EventAccumulator``; W&B runs offline into the test's folder.
"""

from __future__ import annotations

import json

import pytest
from tiny_runs import TRAIN, tiny

import robustproto
from robustproto.checkpoint import load_run_config, read_jsonl
from robustproto.config import load_recipe, resolve_config
from robustproto.errors import UsageError
from robustproto.training import train
from robustproto.training.trackers import resolve_trackers, tracker_config

REG = ["probe:weight=0.01"]


def _tensorboard_scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()  # every event file in the folder, in order (a resumed run adds one)
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _assert_logged_like_metrics_jsonl(scalars, records):
    keys = [k for k in records[0] if k not in ("epoch", "weights_sha256")]
    assert {"train_loss", "train_acc", "test_acc", "lr", "images_per_second", "reg/probe", "reg/probe/calls",
            "reg/probe/shape_ok"} <= set(keys)
    assert set(keys) <= set(scalars)
    for key in keys:
        assert [step for step, _ in scalars[key]] == [r["epoch"] for r in records], key
        assert [value for _, value in scalars[key]] == pytest.approx([r[key] for r in records], rel=1e-6), key


def test_tensorboard_logs_every_epoch_metric_and_the_config(testkit, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    train(tiny(tmp_path, epochs=2, reg=REG, log_with=["tensorboard"]))
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    _assert_logged_like_metrics_jsonl(_tensorboard_scalars(out / "trackers" / "robustproto"), records)
    hparams = list((out / "trackers" / "robustproto").glob("*/hparams.yml"))
    assert len(hparams) == 1 and "probe:weight=0.01" in hparams[0].read_text()


def test_resumed_run_keeps_its_trackers_and_logs_its_epochs_at_their_own_steps(testkit, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    train(tiny(tmp_path, epochs=2, reg=REG, log_with=["tensorboard"], max_train_samples=TRAIN // 4))
    # as `robustproto train --resume OUT --epochs 3` resolves it: the run's config.json, then the flags
    resumed = resolve_config(load_run_config(out), {"resume": str(out), "epochs": 3})
    assert resumed.log_with == ("tensorboard",)
    train(resumed)
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    _assert_logged_like_metrics_jsonl(_tensorboard_scalars(out / "trackers" / "robustproto"), records)


def test_no_tracker_by_default(testkit, tmp_path):
    result = train(tiny(tmp_path, epochs=1, max_train_samples=TRAIN // 4))
    assert not (result.output / "trackers").exists()


def _wandb_history(path):
    """The history rows of an offline W&B run file: LevelDB-log framing (a 7-byte file header, 32 KiB blocks of
    records with a 7-byte header: checksum, length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4) around protobuf Records.
    wandb has no Python reader of its own any more."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, pos, chunk, rows = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record.FromString(chunk)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
            chunk = b""
    return rows


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B in offline mode, writing under ``tmp_path/wandb-dir/wandb``: the folder of its runs."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()  # W&B keeps the settings of its first run in the process (WANDB_DIR among them)
    yield tmp_path / "wandb-dir" / "wandb"
    wandb.teardown()


def test_wandb_offline_run_logs_every_epoch_metric(testkit, tmp_path, wandb_offline):
    train(tiny(tmp_path, epochs=2, reg=REG, log_with=["wandb"], max_train_samples=TRAIN // 4))
    runs = list(wandb_offline.glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    rows = _wandb_history(runs[0])
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [row["_step"] for row in rows] == [1, 2]
    for row, record in zip(rows, records):
        for key in record.keys() - {"epoch", "weights_sha256"}:
            assert row[key] == pytest.approx(record[key], rel=1e-12), key


def test_resumed_run_continues_its_wandb_run(testkit, tmp_path, wandb_offline):
    out = tmp_path / "run"
    train(tiny(tmp_path, epochs=1, log_with=["wandb"], max_train_samples=TRAIN // 4))
    run_id = (out / "trackers" / "wandb-run-id").read_text().strip()
    train(resolve_config(load_run_config(out), {"resume": str(out), "epochs": 2}))
    files = sorted(wandb_offline.glob("offline-run-*/run-*.wandb"))
    assert [f.name for f in files] == [f"run-{run_id}.wandb"] * 2  # one W&B run, written in two sessions
    assert [row["_step"] for f in files for row in _wandb_history(f)] == [1, 2]
    train(tiny(tmp_path, epochs=1, log_with=["wandb"], max_train_samples=TRAIN // 4))  # a new run in the folder
    assert (out / "trackers" / "wandb-run-id").read_text().strip() != run_id


def _installed(monkeypatch, *names):
    """Make Accelerate find exactly the trackers ``names`` installed."""
    from accelerate.utils import LoggerType

    monkeypatch.setattr("accelerate.tracking.get_available_trackers", lambda: [LoggerType(n) for n in names])


def test_tracker_not_installed_is_a_usage_error_naming_the_extra_before_training(testkit, tmp_path, monkeypatch):
    _installed(monkeypatch, "wandb")
    with pytest.raises(UsageError, match=r"^log_with: tensorboard is not installed; pip install "
                                         r"'robustproto\[tensorboard\]'"):
        train(tiny(tmp_path, log_with=["wandb", "tensorboard"]))
    assert not (tmp_path / "run").exists()


def test_tracker_not_installed_on_the_command_line_is_one_line_exit_2(testkit, tmp_path, monkeypatch, capsys):
    from robustproto.cli import main

    _installed(monkeypatch)
    monkeypatch.setattr("sys.argv", ["robustproto", "train", "--backbone", "test_resnet", "--head", "tiny",
                                     "--log-with", "aim", "--output", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert capsys.readouterr().err == ("error: log_with: aim is not installed; pip install 'robustproto[aim]', or "
                                       "leave it out of --log-with\n")
    assert not (tmp_path / "run").exists()


def test_all_is_every_installed_tracker(monkeypatch):
    _installed(monkeypatch, "wandb", "tensorboard", "comet_ml")
    assert resolve_trackers(("all",)) == ["tensorboard", "wandb"]  # only the documented ones, in their order
    assert resolve_trackers(("wandb", "all")) == ["wandb", "tensorboard"]
    assert resolve_trackers(()) == []
    _installed(monkeypatch)
    with pytest.raises(UsageError, match=r"^log_with: 'all' found no tracker installed .*robustproto\[tensorboard\]"):
        resolve_trackers(("all",))


def test_log_with_takes_repeated_and_comma_separated_names():
    assert resolve_config({"log_with": ["tensorboard,WandB", "all", "wandb"]}).log_with == ("tensorboard", "wandb",
                                                                                            "all")
    assert resolve_config({"log_with": "mlflow, aim"}).log_with == ("mlflow", "aim")
    assert resolve_config({"log_with": ["none"]}).log_with == ()  # a flag switches a recipe's trackers off
    assert resolve_config({"log_with": "wandb,"}).log_with == ("wandb",)  # an empty item is no name
    assert resolve_config({}).log_with == ()


@pytest.mark.parametrize("value", [["tensorbord"], ["tensorboard,comet"], "all,nope"])
def test_bad_tracker_name_is_a_usage_error_listing_the_allowed_ones(value):
    with pytest.raises(UsageError, match=r"^log_with: '\w+' is not one of tensorboard, wandb, mlflow, aim, trackio, "
                                         r"all, none$"):
        resolve_config({"log_with": value})


def test_recipe_key_and_saved_config_keep_the_trackers(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text('log_with = ["tensorboard"]\nreg = ["lipschitz:weight=10"]\n')
    cfg = load_recipe(path).train_config()
    assert cfg.log_with == ("tensorboard",)
    assert resolve_config(cfg.to_dict()) == cfg  # config.json gives a resumed run the same trackers
    assert load_recipe(path).train_config({"log_with": ["none"]}).log_with == ()


def test_tracker_config_is_flat_scalars_and_strings():
    cfg = resolve_config({"reg": ["lipschitz:weight=10"], "head_opt": ["prototypes_per_class=2"],
                          "eval": {"L2": {"attack": ["pgd-l2"], "eps": [0.5]}}, "log_with": ["tensorboard"]})
    flat = tracker_config(cfg)
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert flat["reg"] == '["lipschitz:weight=10"]' and flat["log_with"] == '["tensorboard"]'
    assert flat["head_opt/prototypes_per_class"] == 2 and flat["eval/L2/eps"] == "[0.5]"
    assert flat["lr"] == cfg.lr and flat["embed_dim"] == "null" and flat["download"] is False
    assert robustproto.TrainConfig().log_with == ()
