"""The ``robustproto`` command line (typer).

Every command turns its options into plain values and calls the Python API; no
module below the CLI reads ``sys.argv``. Expected failures (bad input, a missing
plugin or file) end with one line on stderr that says what to do, and exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .registry import PluginError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Robust prototype heads and Lipschitz training for timm models.",
)


class UserError(Exception):
    """An error the user can fix; printed as one line, never as a traceback."""


@app.command()
def version() -> None:
    """Print the package version."""
    from . import __version__

    typer.echo(__version__)


@app.command()
def plugins(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the installed heads, regularizers and backbone modules, with load errors."""
    from .registry import list_plugins

    found = list_plugins()
    if as_json:
        typer.echo(json.dumps(found, indent=2, sort_keys=True))
        return
    table = Table(title="robustproto plugins")
    for column in ("group", "name", "source", "status"):
        table.add_column(column)
    for group, entries in found.items():
        for name, info in entries.items():
            status = "[green]ok[/green]" if info["error"] is None else f"[red]{info['error']}[/red]"
            table.add_row(group, name, info["source"], status)
    Console().print(table)


# Commands of later modules register themselves here, one line each.


def _eval_table(config: str | None) -> tuple[dict, dict]:
    """The recipe's ``[eval]`` table and the recipe itself (``{}`` without ``--config``)."""
    if not config:
        return {}, {}
    from .config import load_recipe

    recipe = load_recipe(config)
    table = recipe.get("eval", {})
    if not isinstance(table, dict):
        raise UserError(f"{config}: [eval] must be a table")
    return table, recipe


def _writable(path: str, option: str, folder: bool = False) -> None:
    """Raise :class:`UserError` naming ``option`` when ``path`` (a file to write, or with ``folder`` a folder to
    create or reuse) cannot be written, so a command fails before its work rather than after it: the nearest
    existing path on the way must be a folder this process may write to. Creates nothing."""
    target = Path(path)
    flag = "--" + option.replace("_", "-")
    if folder and target.is_file():
        raise UserError(f"{option}: {target} is a file; pass {flag} a new or existing folder")
    if not folder and target.is_dir():
        raise UserError(f"{option}: {target} is a folder; pass {flag} a file name")
    existing = target if folder else target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option}: cannot create {target}: {existing} is a file, not a folder; "
                        f"pass {flag} a path under a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option}: cannot write to {existing} (permission denied); pass {flag} a path in a folder "
                        "you can write to")


def _check_n_samples(value: object) -> None:
    """``n_samples`` (from the command line or a recipe) is ``None`` or a positive integer."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"n_samples: must be a positive integer, got {value!r}; pass --n-samples N ≥ 1, or leave "
                        "it out to use every test point")


def _run_folder(model: str | None, recipe: dict) -> str:
    if model:
        return model
    if recipe.get("output"):
        return str(recipe["output"])
    raise UserError("pass --model OUT (the run folder of `robustproto train`), or a --config recipe with an output")


@app.command("eval")
def eval_command(
    model: str = typer.Option(None, "--model", help="Run folder of `robustproto train`. (default: the recipe's output)"),
    config: str = typer.Option(None, "--config", help="Recipe TOML; its \\[eval] table gives the defaults below."),
    dataset: str = typer.Option(None, help="Test data. (default: the run's own)"),
    data_dir: str = typer.Option(None, help="Folder that holds it. (default: the run's own)"),
    attack: list[str] = typer.Option(None, "--attack", help="fgsm, fgm, bim, mim, pgd, pgd-l2, deepfool, cw, fab, "
                                                            "square, autoattack, gaussian; pgd-20 sets steps, "
                                                            "pgd@margin the loss (ce, margin, ce+margin; default: "
                                                            "ce for a linear head, else ce+margin) (repeatable)."),
    eps: list[str] = typer.Option(None, "--eps", help="Budgets in pixel units, e.g. 0,0.1,0.3 or 8/255."),
    norm: str = typer.Option(None, help="Linf or L2. (default: Linf)"),
    n_samples: int = typer.Option(None, help="Evaluate a fixed subset of N test points. (default: all)"),
    batch_size: int = typer.Option(None, help="(default: 128)"),
    attack_opt: list[str] = typer.Option(None, "--attack-opt", help="ATTACK:key=value,... e.g. square:n_queries=1000 "
                                                                    "(repeatable)."),
    threshold: str = typer.Option(None, help="Threshold accuracy, NORM=T,... (default: L2=1.5,Linf=0.3)."),
    bisection_steps: int = typer.Option(None, help="Bisection steps on ε per point refining a fixed-budget attack's "
                                                   "minimal distance (median-δ); each costs up to one more attack "
                                                   "run. (default: 0, one run per ε)"),
    report: str = typer.Option("report.json", "--report", help="JSON report to write (∞ written as \"inf\")."),
    plot: str = typer.Option(None, "--plot", help="PNG of the robustness curves."),
    save_examples: str = typer.Option(None, "--save-examples", help="PNG grid of adversarial examples."),
) -> None:
    """Attack a trained model: robust accuracy over ε, median minimal distances, gradient-masking warnings."""
    from .checkpoint import load
    from .config import EvalSettings, parse_eps
    from .evaluate import evaluate, write_report
    from .show import run_data

    table, recipe = _eval_table(config)
    settings = EvalSettings.resolve(table, attack=attack or None, eps=parse_eps(eps), norm=norm, n_samples=n_samples,
                                    batch_size=batch_size, attack_opt=attack_opt or None, threshold=threshold,
                                    bisection_steps=bisection_steps)
    _check_n_samples(settings.n_samples)
    for path, option in ((report, "report"), (plot, "plot"), (save_examples, "save_examples")):
        if path:
            _writable(path, option)
    run = _run_folder(model, recipe)
    data = run_data(run, "test", dataset, data_dir, settings.n_samples)
    result = evaluate(load(run), data, attacks=dict(settings.attacks), eps=dict(settings.eps),
                      batch_size=settings.batch_size, attack_options=settings.attack_options,
                      thresholds=settings.thresholds, bisection_steps=settings.bisection_steps, model_name=run,
                      dataset_name=data.name, plot=plot, save_examples=save_examples, log=typer.echo)
    write_report(result, report)
    typer.echo(f"clean accuracy {result['clean_accuracy']:.4f}; median distance {result['median_distance']}")
    for warning in result["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"wrote {report}" + (f", {plot}" if plot else "") + (f", {save_examples}" if save_examples else ""))


@app.command("certify")
def certify_command(
    model: str = typer.Option(None, "--model", help="Run folder of `robustproto train`. (default: the recipe's output)"),
    config: str = typer.Option(None, "--config", help="Recipe TOML; its \\[eval.certify] table gives the defaults."),
    dataset: str = typer.Option(None, help="Test data. (default: the run's own)"),
    data_dir: str = typer.Option(None, help="Folder that holds it. (default: the run's own)"),
    norm: str = typer.Option(None, help="L2 (the only norm certified). (default: L2)"),
    n_samples: int = typer.Option(None, help="Certify a fixed subset of N test points. (default: all)"),
    radii: str = typer.Option(None, help="Radii for the certified accuracy, e.g. 0.1,0.5,1. "
                                         "(default: 0.1,0.25,0.5,1,1.5,2)"),
    batch_size: int = typer.Option(256),
    report: str = typer.Option("cert.json", "--report", help="JSON report to write."),
) -> None:
    """Certified L2 radii: head margin / Lipschitz bound (and Hein & Andriushchenko's local bound for an mlp)."""
    from .certify import DEFAULT_RADII, certify, certify_summary
    from .checkpoint import load
    from .config import parse_eps
    from .evaluate import write_report
    from .show import run_data

    table, recipe = _eval_table(config)
    defaults = dict(table.get("certify", {}))
    unknown = sorted(set(defaults) - {"norm", "n_samples", "radii"})
    if unknown:
        raise UserError(f"[eval.certify]: unknown key(s) {', '.join(unknown)} (known: norm, n_samples, radii)")
    run = _run_folder(model, recipe)
    limit = n_samples if n_samples is not None else defaults.get("n_samples")
    _check_n_samples(limit)
    _writable(report, "report")
    data = run_data(run, "test", dataset, data_dir, limit)
    result = certify(load(run), data, norm=norm or defaults.get("norm", "L2"),
                     radii=parse_eps([radii], "--radii") if radii else defaults.get("radii", DEFAULT_RADII),
                     batch_size=batch_size, model_name=run, dataset_name=data.name)
    write_report(result, report)
    typer.echo(certify_summary(result))
    typer.echo(f"wrote {report}")


@app.command()
def train(
    config: str = typer.Option(None, "--config", help="Recipe TOML; every option below has the same key there."),
    backbone: str = typer.Option(None, help="timm model name or one a backbone plugin registers. "
                                            "(default: resnet18)"),
    backbone_opt: list[str] = typer.Option(None, "--backbone-opt", help="key=value for timm.create_model."),
    head: str = typer.Option(None, help="Head plugin (`robustproto plugins`). (default: linear)"),
    head_opt: list[str] = typer.Option(None, "--head-opt", help="key=value head option (repeatable)."),
    reg: list[str] = typer.Option(None, "--reg", help="NAME[:key=value,...] regularizer (repeatable); none."),
    embed_dim: int = typer.Option(None, help="Embedding size (a linear neck maps the features to it)."),
    pretrained_weights: str = typer.Option(None, help="Local .safetensors/.pth state dict of the timm backbone."),
    mean: str = typer.Option(None, help="Per-channel mean, e.g. 0.5,0.5,0.5 [the backbone's]."),
    std: str = typer.Option(None, help="Per-channel std [the backbone's]."),
    dataset: str = typer.Option(None, help="mnist-small (bundled), mnist, fashion-mnist, cifar10, cifar100, "
                                           "imagefolder. (default: mnist-small)"),
    data_dir: str = typer.Option(None, help="Folder that holds the dataset."),
    download: bool = typer.Option(None, "--download/--no-download", help="Let torchvision download it."),
    img_size: int = typer.Option(None, help="Resize images to N×N."),
    max_train_samples: int = typer.Option(None, help="Train on a fixed subset of N samples."),
    max_test_samples: int = typer.Option(None, help="Test on a fixed subset of N samples."),
    augment: str = typer.Option(None, help="auto (crop+flip for CIFAR/image folders, none for MNIST), none, "
                                           "crop-flip, shift-rotate (±2 px, ±15°). (default: auto)"),
    workers: int = typer.Option(None, help="DataLoader worker processes. (default: 0)"),
    epochs: int = typer.Option(None, help="(default: 5)"),
    batch_size: int = typer.Option(None, help="Per process. (default: 64)"),
    optimizer: str = typer.Option(None, help="timm optimizer name. (default: adam)"),
    lr: float = typer.Option(None, help="(default: 0.001)"),
    weight_decay: float = typer.Option(None, help="(default: 0)"),
    sched: str = typer.Option(None, help="timm scheduler: cosine, tanh, step, multistep, poly, constant, none. "
                                         "(default: cosine)"),
    warmup_epochs: int = typer.Option(None, help="(default: 0)"),
    freeze_backbone_epochs: int = typer.Option(None, help="Train only neck and head for the first N epochs. "
                                                         "(default: 0)"),
    init_samples: int = typer.Option(None, help="Training samples init_from_data sees. (default: 2048)"),
    mixed_precision: str = typer.Option(None, help="no, fp16 or bf16. (default: no)"),
    seed: int = typer.Option(None, help="(default: 0)"),
    output: str = typer.Option(None, help="Run folder. (default: runs/latest; with --resume: that folder)"),
    resume: str = typer.Option(None, help="Continue the run in this folder from its last saved state."),
) -> None:
    """Train a timm backbone with a head (and regularizers); writes model.safetensors, config.json, metrics.jsonl."""
    overrides = {key: value for key, value in locals().items() if key != "config"}  # the options, nothing else yet
    from .checkpoint import load_run_config
    from .config import load_recipe, resolve_config

    layers = []
    if resume:
        layers.append(load_run_config(resume))
        overrides["output"] = output or resume
    if config:
        layers.append(load_recipe(config))
    cfg = resolve_config(*layers, overrides)
    _writable(cfg.output, "output", folder=True)

    from .train import NonFiniteLossError, train as run_training

    try:
        run_training(cfg)
    except NonFiniteLossError as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:
        sys.exit(130)


show_app = typer.Typer(no_args_is_help=True, help="Pictures of trained models (PNG): prototypes, adversarial examples, "
                                                  "robustness curves.")
app.add_typer(show_app, name="show")


@show_app.command("prototypes")
def show_prototypes(
    model: str = typer.Option(..., "--model", help="Run folder of `robustproto train` (or its model.safetensors)."),
    dataset: str = typer.Option(None, help="Dataset to draw images from. (default: the run's own)"),
    data_dir: str = typer.Option(None, help="Folder that holds it. (default: the run's own)"),
    max_samples: int = typer.Option(None, help="Search the nearest images among N training samples. "
                                               "(default: the run's max_train_samples, else all)"),
    neighbours: int = typer.Option(6, help="Nearest training images per prototype (deep backbones)."),
    max_prototypes: int = typer.Option(40, help="Draw at most this many prototypes."),
    out: str = typer.Option("prototypes.png", "--out", help="PNG to write."),
) -> None:
    """Prototypes as images (pixel-space models such as `flatten`), else the training images nearest to each."""
    from .checkpoint import load
    from .show import plot_prototypes, run_data

    _writable(out, "out")
    data = run_data(model, "train", dataset, data_dir, max_samples)
    path = plot_prototypes(load(model), out, data=data, neighbours=neighbours, max_prototypes=max_prototypes)
    typer.echo(f"wrote {path}")


@show_app.command("adversarial")
def show_adversarial(
    model: str = typer.Option(..., "--model", help="Run folder of `robustproto train` (or its model.safetensors)."),
    attack: list[str] = typer.Option(..., "--attack", help="Attack name as in `robustproto eval` (repeatable)."),
    eps: list[str] = typer.Option(None, "--eps", help="Budgets in pixel units for fixed-budget attacks, e.g. 0.1,0.3 "
                                                      "or 8/255."),
    norm: str = typer.Option("Linf", help="Linf or L2."),
    n_images: int = typer.Option(10, help="Correctly classified test images to attack."),
    dataset: str = typer.Option(None, help="Dataset to draw test images from. (default: the run's own)"),
    data_dir: str = typer.Option(None, help="Folder that holds it. (default: the run's own)"),
    out: str = typer.Option("adversarial.png", "--out", help="PNG to write."),
) -> None:
    """A grid of clean test images and their adversarial versions with predictions, per attack and ε."""
    from .checkpoint import load
    from .config import parse_eps
    from .show import plot_adversarial, run_data

    _writable(out, "out")
    data = run_data(model, "test", dataset, data_dir)
    path = plot_adversarial(load(model), data, out, list(attack), parse_eps(eps) or [], norm=norm, n_images=n_images)
    typer.echo(f"wrote {path}")


@show_app.command("curves")
def show_curves(
    reports: list[str] = typer.Argument(..., help="Report JSON files of `robustproto eval --report`."),
    label: list[str] = typer.Option(None, "--label", help="Legend name per report, in order (default: its model)."),
    out: str = typer.Option("curves.png", "--out", help="PNG to write."),
) -> None:
    """Robustness curves of several models on one plot (one panel per norm), from their eval reports."""
    from .evaluate import save_robustness_curves

    _writable(out, "out")

    loaded = []
    for report in reports:
        path = Path(report)
        if not path.is_file():
            raise FileNotFoundError(f"no report at {path}: pass files written by `robustproto eval --report`")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise UserError(f"{path} is not a report of `robustproto eval` (no results list)")
        loaded.append(data)
    if label and len(label) != len(loaded):
        raise UserError(f"--label: {len(label)} given for {len(loaded)} reports; give one per report or none")
    typer.echo(f"wrote {save_robustness_curves(loaded, out, label or None)}")


def main() -> None:
    """Entry point: run the app (click handles usage errors), turning expected errors into one line, exit 2."""
    try:
        app()
    except (UserError, PluginError, ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
