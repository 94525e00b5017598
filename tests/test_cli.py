"""The command line: plugin listing, version, and one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import robustproto
from robustproto.cli import app

runner = CliRunner()


def test_plugins_json_lists_the_built_in_heads_without_errors():
    result = runner.invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert set(found) >= {"heads", "regularizers", "backbones"}
    for name in ("linear", "glvq", "gmlvq", "gtlvq", "repulsive"):
        assert found["heads"][name]["error"] is None
        assert found["heads"][name]["source"].startswith("robustproto ")


def test_plugins_table_names_every_head():
    result = runner.invoke(app, ["plugins"])
    assert result.exit_code == 0
    for name in ("linear", "glvq", "gmlvq", "gtlvq", "repulsive"):
        assert name in result.output


def test_version_matches_the_package():
    result = runner.invoke(app, ["version"])
    assert result.output.strip() == robustproto.__version__ != "0.0.0+unknown"


def test_unknown_command_is_a_usage_error_not_a_traceback():
    result = subprocess.run([sys.executable, "-m", "robustproto", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "No such command" in result.stderr and "Traceback" not in result.stderr


# Bad input through the real entry point (robustproto.cli.main, which turns expected errors into one line):
# each case is (arguments, words the line must contain). {run} is a trained run folder, {tmp} a scratch
# folder, {file} a regular file there (a path under it cannot be created, even by root), {empty} an empty
# folder. Train cases write to {tmp}/out, eval and certify cases to {tmp}/report.json: neither may appear.
TRAIN = ["train", "--backbone", "flatten", "--head", "linear", "--max-train-samples", "32",
         "--max-test-samples", "16", "--output", "{tmp}/out"]
EVAL = ["eval", "--model", "{run}", "--n-samples", "8"]
CERTIFY = ["certify", "--model", "{run}", "--report", "{tmp}/report.json"]
FGSM = ["--attack", "fgsm", "--eps", "0.1"]
REPORT = ["--report", "{tmp}/report.json"]
HUGE = "1" + "0" * 400  # beyond a float: timm's schedules cannot compute with it

BAD_INPUT = {
    "lr-overflows-adam": (TRAIN + ["--lr", "1e38"], "error: lr: "),
    "lr-inf": (TRAIN + ["--lr", "inf"], "error: lr: "),
    "weight-decay-blows-up-sgd": (TRAIN + ["--optimizer", "sgd", "--weight-decay", "1e38"], "error: weight_decay: "),
    "optimizer-the-loop-cannot-drive": (TRAIN + ["--optimizer", "adahessian"], "error: optimizer: "),
    "warmup-as-long-as-the-run": (TRAIN + ["--epochs", "2", "--warmup-epochs", "2"], "error: warmup_epochs: "),
    "epochs-beyond-the-schedule": (TRAIN + ["--epochs", HUGE], "error: sched: "),
    "recipe-value-of-wrong-type": (TRAIN + ["--config", "{tmp}/five.toml"], "error: epochs: "),
    "corrupt-recipe": (TRAIN + ["--config", "{tmp}/corrupt.toml"], "error: config: "),
    "output-under-a-file": (TRAIN[:-1] + ["{file}/run"], "error: output: "),
    "resume-of-a-folder-that-is-not-a-run": (["train", "--resume", "{empty}", "--output", "{tmp}/out"], "resume"),
    "imagefolder-without-data-dir": (TRAIN + ["--dataset", "imagefolder"], "--data-dir"),
    "unknown-regularizer": (TRAIN + ["--reg", "unknown-reg"], "regularizer 'unknown-reg'"),
    "head-opt-without-equals": (TRAIN + ["--head-opt", "oops"], "error: head_opt: "),
    "eps-not-a-number": (EVAL + REPORT + ["--attack", "fgsm", "--eps", "0.1,abc"], "--eps: 'abc'"),
    "eps-division-by-zero": (EVAL + REPORT + ["--attack", "fgsm", "--eps", "1/0"], "--eps: '1/0'"),
    "eps-negative": (EVAL + REPORT + ["--attack", "fgsm", "--eps", "-0.1"], "eps"),
    "unknown-attack-option": (EVAL + REPORT + ["--attack", "pgd", "--eps", "0.1", "--attack-opt", "pgd:stepz=3"],
                              "stepz"),
    "unknown-attack": (EVAL + REPORT + ["--attack", "zap", "--eps", "0.1"], "error: attack: "),
    "l2-attack-with-linf": (EVAL + REPORT + ["--attack", "deepfool", "--norm", "Linf"], "Linf"),
    "eval-negative-n-samples": (EVAL + REPORT + FGSM + ["--n-samples", "-3"], "error: n_samples: "),
    "eval-model-not-a-run": (["eval", "--model", "{empty}"] + REPORT + FGSM, "model"),
    "eval-report-under-a-file": (EVAL + FGSM + ["--report", "{file}/report.json"], "error: report: "),
    "certify-zero-n-samples": (CERTIFY + ["--n-samples", "0"], "error: n_samples: "),
    "certify-report-under-a-file": (CERTIFY[:-1] + ["{file}/report.json", "--n-samples", "8"], "error: report: "),
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from robustproto.config import resolve_config

    out = tmp_path_factory.mktemp("cli") / "run"
    robustproto.train(resolve_config({"backbone": "flatten", "head": "glvq", "epochs": 1, "max_train_samples": 64,
                          "max_test_samples": 32, "output": str(out)}))
    return out


def _snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _main(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Exit code and stderr of ``robustproto ARGV`` run in this process through ``robustproto.cli.main``."""
    from robustproto.cli import main

    monkeypatch.setattr(sys, "argv", ["robustproto", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize("argv, words", list(BAD_INPUT.values()), ids=list(BAD_INPUT))
def test_bad_input_is_one_line_naming_the_option_exit_2(trained_run, tmp_path, monkeypatch, capsys, argv, words):
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "five.toml").write_text('epochs = "five"\n')
    (tmp_path / "corrupt.toml").write_text("epochs = [\n")
    monkeypatch.chdir(tmp_path)
    before = _snapshot(trained_run)
    places = {"run": str(trained_run), "tmp": str(tmp_path), "file": str(tmp_path / "afile"),
              "empty": str(tmp_path / "empty")}
    code, err = _main([arg.format(**places) for arg in argv], monkeypatch, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert words in err and "Traceback" not in err, err
    assert _snapshot(trained_run) == before  # nothing lost
    assert not (tmp_path / "out").exists() and not (tmp_path / "report.json").exists()


def test_bad_lr_from_a_real_process_is_one_line(tmp_path):
    # the entry point as installed, with the interpreter's own warnings and exit handling
    cmd = [sys.executable, "-m", "robustproto", *TRAIN[:-1], str(tmp_path / "out"), "--lr", "1e38"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: lr: ") and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ options generated from the config schema
def _squash(text: str) -> str:
    """Help text without the box and the line breaks rich puts in, to find a phrase however it wraps."""
    return re.sub(r"[\s│]+", "", text)


@pytest.mark.parametrize("command, schema", [("train", "TrainConfig"), ("eval", "EvalConfig"),
                                             ("certify", "CertifyConfig")])
def test_help_lists_every_field_with_its_help_and_default(command, schema):
    import dataclasses

    from robustproto import config

    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = _squash(result.output)
    for f in dataclasses.fields(getattr(config, schema)):
        if f.metadata.get("cli") is False:
            assert "--" + f.name.replace("_", "-") not in result.output
            continue
        flag = "--" + config.key_of(f).replace("_", "-")
        assert re.search(rf"{flag}(\s|/)", result.output), flag
        expected = f.metadata["help"]
        if isinstance(f.default, (int, float, str)) and not isinstance(f.default, bool):
            expected += f"[default: {f.default}]"
        elif f.default is None and "none" in f.metadata:
            expected += f"[default: ({f.metadata['none']})]"
        assert _squash(expected) in text, (flag, expected)
    assert "(default:" not in result.output  # no hand-written default left in a help text


def test_train_help_shows_the_generated_defaults():
    text = _squash(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output)
    for phrase in ("--batch-size<int>Imagesperstepandprocess.[default:64]", "[default:no-download]",
                   "--lr<float>", "[default:0.001]", "--max-train-samples<int>", "[default:(all)]"):
        assert phrase in text
    text = _squash(runner.invoke(app, ["certify", "--help"], env={"COLUMNS": "200"}).output)
    assert "[default:0.1,0.25,0.5,1,1.5,2]" in text


def test_train_flags_override_the_recipe_which_overrides_the_defaults(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(robustproto, "train", seen.append)  # the command calls robustproto.train(cfg)
    recipe = tmp_path / "r.toml"
    recipe.write_text('epochs = 3\nlr = 0.1\nseed = 4\nhead_opt = {prototypes_per_class = 2}\nreg = ["lipschitz"]\n')
    result = runner.invoke(app, ["train", "--config", str(recipe), "--lr", "0.001", "--reg", "none", "--head-opt",
                                 "prototypes_per_class=3", "--mean", "0.5", "--std", "0.25", "--output",
                                 str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    (cfg,) = seen
    assert cfg.epochs == 3 and cfg.seed == 4  # the recipe over the defaults
    assert cfg.lr == 0.001  # a flag equal to its default still overrides the recipe
    assert cfg.head_opt == {"prototypes_per_class": 3} and cfg.reg == () and cfg.mean == (0.5,)
    assert cfg.batch_size == robustproto.TrainConfig().batch_size and cfg.output == str(tmp_path / "out")

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"epochs": 2, "seed": 7, "output": "elsewhere"}))
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "run"), "--seed", "8"])
    assert result.exit_code == 0, result.output
    assert (seen[1].epochs, seen[1].seed, seen[1].output) == (2, 8, str(tmp_path / "run"))


def test_eval_and_certify_read_their_tables_of_the_recipe(trained_run, tmp_path, monkeypatch):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'output = "{trained_run}"\n[eval]\nattack = ["fgsm"]\neps = [0.1]\nn_samples = 8\n'
                      'bisection_steps = 1\n[eval.certify]\nn_samples = 8\nradii = [0.5]\n')
    seen = {}

    def fake_evaluate(model, data, **kwargs):
        seen.update(kwargs, n=len(data))
        return {"clean_accuracy": 1.0, "median_distance": {}, "warnings": []}

    monkeypatch.setattr(robustproto, "evaluate", fake_evaluate)
    result = runner.invoke(app, ["eval", "--config", str(recipe), "--eps", "0.2", "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert seen["attacks"] == {"Linf": ("fgsm",)} and seen["eps"] == {"Linf": (0.2,)}  # --eps over the recipe
    assert seen["n"] == 8 and seen["bisection_steps"] == 1 and seen["batch_size"] == 128
    for flags, radii in (([], {"0.5"}), (["--radii", "1,2"], {"1", "2"})):
        report = tmp_path / "cert.json"
        result = runner.invoke(app, ["certify", "--config", str(recipe), "--report", str(report), *flags])
        assert result.exit_code == 0, result.output
        cert = json.loads(report.read_text())
        assert len(cert["radii"]) == 8 and set(cert["certified_accuracy"]) == radii


@pytest.mark.parametrize("command", ["eval", "certify"])
def test_eval_and_certify_run_the_model_on_the_device_given(trained_run, tmp_path, monkeypatch, capsys, command):
    seen = []
    original = robustproto.load
    monkeypatch.setattr(robustproto, "load", lambda run, device="cpu": seen.append(str(device)) or original(run, device))
    flags = ["--attack", "fgsm", "--eps", "0.1"] if command == "eval" else []
    base = [command, "--model", str(trained_run), "--n-samples", "4", "--report", str(tmp_path / "r.json"), *flags]
    assert runner.invoke(app, base).exit_code == 0
    assert runner.invoke(app, [*base, "--device", "cpu"]).exit_code == 0
    assert seen == ["cuda" if torch.cuda.is_available() else "cpu", "cpu"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    code, err = _main([*base, "--device", "cuda:1"], monkeypatch, capsys)
    assert code == 2 and err.splitlines()[-1] == ("error: device: cuda:1 is not available here (0 CUDA GPUs); pass "
                                                  "--device auto or --device cpu")
    code, err = _main([*base, "--device", "gpu"], monkeypatch, capsys)
    assert code == 2 and err.splitlines()[-1] == "error: device: 'gpu' is not one of auto, cpu, cuda, cuda:N"


# ------------------------------------------------------------------ one error base: bugs keep their traceback
@pytest.mark.parametrize("bug", [RuntimeError, ValueError, KeyError])
def test_a_bug_keeps_its_traceback_through_main(monkeypatch, bug):
    from robustproto import cli

    def version() -> None:  # the command's name comes from its function
        raise bug("a bug")

    (command,) = [c for c in cli.app.registered_commands if c.callback.__name__ == "version"]
    monkeypatch.setattr(command, "callback", version)
    monkeypatch.setattr(sys, "argv", ["robustproto", "version"])
    with pytest.raises(bug, match="a bug"):
        cli.main()


def test_a_bug_prints_its_traceback_from_a_real_process():
    code = ("import sys, robustproto, robustproto.cli as cli; robustproto.list_plugins = lambda: 1 / 0; "
            "sys.argv = ['robustproto', 'plugins']; cli.main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr and "error: " not in result.stderr


@pytest.mark.parametrize("how", ["flag", "env", "off"])
def test_debug_shows_the_traceback_of_a_usage_error(tmp_path, monkeypatch, capsys, how):
    argv = ["train", "--epochs", "0", "--output", str(tmp_path / "out")]
    monkeypatch.delenv("ROBUSTPROTO_DEBUG", raising=False)
    if how == "flag":
        argv.insert(0, "--debug")
    elif how == "env":
        monkeypatch.setenv("ROBUSTPROTO_DEBUG", "1")
    code, err = _main(argv, monkeypatch, capsys)
    assert code == 2
    assert err.splitlines()[-1] == "error: epochs: must be positive, got 0; pass --epochs N ≥ 1"
    if how == "off":
        assert err.count("\n") == 1
    else:
        assert "Traceback" in err and "robustproto.errors.UsageError: epochs: must be positive" in err
    assert not (tmp_path / "out").exists()
