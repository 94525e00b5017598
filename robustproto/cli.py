"""The ``robustproto`` command line (typer).

Every command turns its options into plain values and calls the Python API; no module below the CLI reads
``sys.argv``. The options of ``train``, ``eval`` and ``certify`` are generated from the fields of
:class:`~robustproto.config.TrainConfig`, :class:`~robustproto.config.EvalConfig` and
:class:`~robustproto.config.CertifyConfig` (name, type, help, default), and a ``--config`` recipe is resolved by
:func:`~robustproto.config.load_recipe` alone: flags given override the recipe, which overrides the defaults.

A :class:`~robustproto.errors.RobustProtoError` (bad input, a missing plugin or file) ends with one line on
stderr, ``error: ...``, and exit code 2 (``--debug`` or ``ROBUSTPROTO_DEBUG=1`` print its traceback first);
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
import traceback
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

import robustproto

from .config import CertifyConfig, EvalConfig, Recipe, TrainConfig, key_of, load_recipe, resolve_device
from .errors import MissingFileError, RobustProtoError, UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Robust prototype heads and Lipschitz training for timm models.",
)
_state = {"debug": False}


@app.callback()
def _app_options(debug: bool = typer.Option(False, "--debug", envvar="ROBUSTPROTO_DEBUG",
                                            help="Print the traceback of an error too.")) -> None:
    _state["debug"] = debug


# ------------------------------------------------------------------ options generated from the config schema
def _flag_type(f: dataclasses.Field, hint: Any) -> Any:
    """The type of a field's flag: its own for bool/int/float/str (also ``X | None``), a comma list (``str``)
    for a tuple of numbers, a repeatable ``list[str]`` for options, tables and lists of names."""
    if f.metadata.get("cli") not in (None, True):
        return f.metadata["cli"]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint in (bool, int, float, str):
        return hint
    return str if hint == tuple[float, ...] else list[str]


def _flag_default(f: dataclasses.Field, flag_type: Any) -> tuple[Any, Any]:
    """``(default, show_default)`` of a field's flag, written as the flag takes it."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if default is None:
        return None, f.metadata.get("none", False)
    if flag_type is list[str] or (isinstance(default, (Mapping, tuple)) and not default):
        return None, False
    if isinstance(default, Mapping):
        return ",".join(f"{k}={v:g}" for k, v in default.items()), True
    if isinstance(default, tuple):
        return ",".join(f"{v:g}" for v in default), True
    return default, True


def _schema_options(schema: type) -> list[inspect.Parameter]:
    """One keyword parameter with a ``typer.Option`` per field of ``schema`` (``--kebab-case`` of its key)."""
    hints = typing.get_type_hints(schema)
    params = []
    for f in dataclasses.fields(schema):
        if f.metadata.get("cli") is False:
            continue
        name, flag_type = key_of(f), _flag_type(f, hints[f.name])
        flag = "--" + name.replace("_", "-")
        default, shown = _flag_default(f, flag_type)
        decls = [f"{flag}/--no-{flag[2:]}"] if flag_type is bool else [flag]
        option = typer.Option(default, *decls, help=f.metadata["help"], show_default=shown)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=flag_type, default=option))
    return params


def _with_schema(schema: type, after: str) -> Callable[[Callable], Callable]:
    """Give a command ``def f(<own options>, **flags)`` the options of ``schema`` after its option ``after``
    (typer reads the ``__signature__``); ``flags`` then holds the schema's flags the user gave."""
    def decorate(command: Callable) -> Callable:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in inspect.signature(command).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        at = [p.name for p in own].index(after) + 1
        command.__signature__ = inspect.Signature(own[:at] + _schema_options(schema) + own[at:])
        return command
    return decorate


def _given(ctx: typer.Context, flags: dict[str, Any]) -> dict[str, Any]:
    """The flags given on the command line: not those left at their (shown) defaults."""
    return {k: v for k, v in flags.items() if getattr(ctx.get_parameter_source(k), "name", "DEFAULT") != "DEFAULT"}


def _recipe(config: str | None) -> Recipe:
    return load_recipe(config) if config else Recipe()


# ------------------------------------------------------------------ commands
@app.command()
def version() -> None:
    """Print the package version."""
    typer.echo(robustproto.__version__)


@app.command()
def plugins(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the installed heads, regularizers and backbone modules, with load errors."""
    found = robustproto.list_plugins()
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


def _writable(path: str, option: str, folder: bool = False) -> None:
    """Raise a UsageError naming ``option`` when ``path`` (a file to write, or with ``folder`` a folder to create or
    reuse) cannot be written, so a command fails before its work rather than after it: the nearest existing path
    on the way must be a folder this process may write to. Creates nothing."""
    target = Path(path)
    flag = "--" + option.replace("_", "-")
    if folder and target.is_file():
        raise UsageError(f"{option}: {target} is a file; pass {flag} a new or existing folder")
    if not folder and target.is_dir():
        raise UsageError(f"{option}: {target} is a folder; pass {flag} a file name")
    existing = target if folder else target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option}: cannot create {target}: {existing} is a file, not a folder; "
                         f"pass {flag} a path under a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option}: cannot write to {existing} (permission denied); pass {flag} a path in a folder "
                         "you can write to")


def _run_folder(model: str | None, recipe: Recipe) -> str:
    if model or recipe.output:
        return model or recipe.output
    raise UsageError("model: pass --model OUT (the run folder of `robustproto train`), or a --config recipe with an "
                     "output")


MODEL_HELP = "Run folder of `robustproto train`; without it, the --config recipe's output."
DATASET_HELP = "Test data; without it, the run's own."
DATA_DIR_HELP = "Folder that holds it; without it, the run's own."


@app.command("eval")
@_with_schema(EvalConfig, after="data_dir")
def eval_command(
    ctx: typer.Context,
    model: str = typer.Option(None, "--model", help=MODEL_HELP),
    config: str = typer.Option(None, "--config", help="Recipe TOML; its \\[eval] table gives the defaults below."),
    dataset: str = typer.Option(None, help=DATASET_HELP),
    data_dir: str = typer.Option(None, help=DATA_DIR_HELP),
    report: str = typer.Option("report.json", "--report", help="JSON report to write (∞ written as \"inf\"); "
                                                                "rewritten after each attack, its `unfinished` "
                                                                "listing those not yet run."),
    plot: str = typer.Option(None, "--plot", help="PNG of the robustness curves."),
    save_examples: str = typer.Option(None, "--save-examples", help="PNG grid of adversarial examples."),
    claim: str = typer.Option("robustbench.json", "--claim", help="With --protocol robustbench: RobustBench's "
                                                                  "model_info JSON to write."),
    **flags: Any,
) -> None:
    """Attack a trained model: robust accuracy over ε, median minimal distances, gradient-masking warnings."""
    from .show import run_data

    recipe = _recipe(config)
    settings = recipe.eval_config(**_given(ctx, flags))
    robustbench = settings.protocol == "robustbench"
    for path, option in ((report, "report"), (plot, "plot"), (save_examples, "save_examples"),
                         (claim if robustbench else None, "claim")):
        if path:
            _writable(path, option)
    run = _run_folder(model, recipe)
    device = resolve_device(settings.device)  # a missing GPU is refused before any data is read
    if robustbench:
        from .checkpoint import read_metadata
        from .evaluation import robustbench as protocol

        trained = read_metadata(run)["config"]
        typer.echo(protocol.override_note(settings.norm, settings.attacks, settings.eps, settings.n_samples,
                                          settings.attack_options))
        data = protocol.robustbench_data(dataset or trained.get("dataset", "mnist-small"),
                                         data_dir if data_dir is not None else trained.get("data_dir"),
                                         trained.get("img_size"))
        result, info = protocol.evaluate_robustbench(
            robustproto.load(run, device), data, norm=settings.norm, batch_size=settings.batch_size, model_name=run,
            dataset_name=data.name, plot=plot, save_examples=save_examples, log=typer.echo)
        robustproto.write_report(info, claim)
    else:
        data = run_data(run, "test", dataset, data_dir, settings.n_samples)
        result = robustproto.evaluate(
            robustproto.load(run, device), data, attacks=dict(settings.attacks), eps=dict(settings.eps),
            batch_size=settings.batch_size, attack_options=settings.attack_options, thresholds=settings.thresholds,
            bisection_steps=settings.bisection_steps, model_name=run, dataset_name=data.name, plot=plot,
            save_examples=save_examples, log=typer.echo,
            partial_report=lambda partial: robustproto.write_report(partial, report))
    robustproto.write_report(result, report)
    typer.echo(f"clean accuracy {result['clean_accuracy']:.4f}; median distance {result['median_distance']}")
    for warning in result["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"wrote {report}" + (f", {claim}" if robustbench else "") + (f", {plot}" if plot else "")
               + (f", {save_examples}" if save_examples else ""))


@app.command("certify")
@_with_schema(CertifyConfig, after="data_dir")
def certify_command(
    ctx: typer.Context,
    model: str = typer.Option(None, "--model", help=MODEL_HELP),
    config: str = typer.Option(None, "--config", help="Recipe TOML; its \\[eval.certify] table gives the defaults "
                                                      "below."),
    dataset: str = typer.Option(None, help=DATASET_HELP),
    data_dir: str = typer.Option(None, help=DATA_DIR_HELP),
    report: str = typer.Option("cert.json", "--report", help="JSON report to write."),
    **flags: Any,
) -> None:
    """Certified L2 radii: head margin / Lipschitz bound (and Hein & Andriushchenko's local bound for an mlp)."""
    from .show import run_data

    recipe = _recipe(config)
    settings = recipe.certify_config(**_given(ctx, flags))
    run = _run_folder(model, recipe)
    _writable(report, "report")
    device = resolve_device(settings.device)
    data = run_data(run, "test", dataset, data_dir, settings.n_samples)
    result = robustproto.certify(robustproto.load(run, device), data, norm=settings.norm, radii=settings.radii,
                                 batch_size=settings.batch_size, tightness_samples=settings.tightness_samples,
                                 model_name=run, dataset_name=data.name)
    robustproto.write_report(result, report)
    typer.echo(robustproto.certify_summary(result))
    typer.echo(f"wrote {report}")


@app.command()
@_with_schema(TrainConfig, after="config")
def train(
    ctx: typer.Context,
    config: str = typer.Option(None, "--config", help="Recipe TOML; every option below has the same key there."),
    **flags: Any,
) -> None:
    """Train a timm backbone with a head (and regularizers); writes model.safetensors, config.json, metrics.jsonl."""
    from .checkpoint import load_run_config

    overrides, base = _given(ctx, flags), None
    if overrides.get("resume"):
        base = load_run_config(overrides["resume"])
        overrides.setdefault("output", overrides["resume"])
    cfg = _recipe(config).train_config(overrides, base)
    _writable(cfg.output, "output", folder=True)
    try:
        robustproto.train(cfg)
    except KeyboardInterrupt:
        sys.exit(130)


@app.command("export")
def export_command(
    run: str = typer.Argument(..., help="Run folder of `robustproto train` (or its model.safetensors)."),
    out: str = typer.Argument(..., help="Folder to write: model.safetensors, config.json, README.md."),
    report: list[str] = typer.Option(None, "--report", help="Eval/certify report for the model card (repeatable); "
                                                            "without it, the reports in RUN."),
    force: bool = typer.Option(False, "--force", help="Replace the contents of a non-empty OUT."),
    push_to_hub: str = typer.Option(None, "--push-to-hub", help="Then upload OUT to this Hub repo (user/name); "
                                                                "needs huggingface_hub and a login."),
    private: bool = typer.Option(False, "--private", help="Create the Hub repo private."),
) -> None:
    """Write a trained model in Hugging Face's layout with a model card; linear-head models load in plain timm."""
    _writable(out, "out", folder=True)
    result = robustproto.export(run, out, reports=report or None, force=force, push_to_hub=push_to_hub,
                                private=private)
    how = ("timm.create_model(\"local-dir:" + out + "\", pretrained=True) or robustproto.load" if result["timm_loadable"]
           else f"robustproto.load (not timm: {result['not_timm_because']})")
    typer.echo(f"wrote {out} with {len(result['reports'])} report(s) in its model card; load it with {how}")
    if result["url"]:
        typer.echo(f"uploaded to {result['url']}")


show_app = typer.Typer(no_args_is_help=True, help="Pictures of trained models (PNG): prototypes, adversarial examples, "
                                                  "robustness curves.")
app.add_typer(show_app, name="show")


@show_app.command("prototypes")
def show_prototypes(
    model: str = typer.Option(..., "--model", help="Run folder of `robustproto train` (or its model.safetensors)."),
    dataset: str = typer.Option(None, help="Dataset to draw images from; without it, the run's own."),
    data_dir: str = typer.Option(None, help=DATA_DIR_HELP),
    max_samples: int = typer.Option(None, help="Search the nearest images among N training samples; without it, "
                                               "the run's max_train_samples, else all."),
    neighbours: int = typer.Option(6, help="Nearest training images per prototype (deep backbones)."),
    max_prototypes: int = typer.Option(40, help="Draw at most this many prototypes."),
    out: str = typer.Option("prototypes.png", "--out", help="PNG to write."),
) -> None:
    """Prototypes as images (pixel-space models such as `flatten`), else the training images nearest to each."""
    from .show import plot_prototypes, run_data

    _writable(out, "out")
    data = run_data(model, "train", dataset, data_dir, max_samples)
    path = plot_prototypes(robustproto.load(model), out, data=data, neighbours=neighbours,
                           max_prototypes=max_prototypes)
    typer.echo(f"wrote {path}")


@show_app.command("adversarial")
def show_adversarial(
    model: str = typer.Option(..., "--model", help="Run folder of `robustproto train` (or its model.safetensors)."),
    attack: list[str] = typer.Option(..., "--attack", help="Attack name as in `robustproto eval` (repeatable)."),
    eps: list[str] = typer.Option(None, "--eps", help="Budgets in pixel units for fixed-budget attacks, e.g. 0.1,0.3 "
                                                      "or 8/255."),
    norm: str = typer.Option("Linf", help="Linf or L2."),
    n_images: int = typer.Option(10, help="Correctly classified test images to attack."),
    dataset: str = typer.Option(None, help="Dataset to draw test images from; without it, the run's own."),
    data_dir: str = typer.Option(None, help=DATA_DIR_HELP),
    out: str = typer.Option("adversarial.png", "--out", help="PNG to write."),
) -> None:
    """A grid of clean test images and their adversarial versions with predictions, per attack and ε."""
    from .config import parse_eps
    from .show import plot_adversarial, run_data

    _writable(out, "out")
    data = run_data(model, "test", dataset, data_dir)
    path = plot_adversarial(robustproto.load(model), data, out, list(attack), parse_eps(eps) or [], norm=norm,
                            n_images=n_images)
    typer.echo(f"wrote {path}")


@show_app.command("curves")
def show_curves(
    reports: list[str] = typer.Argument(..., help="Report JSON files of `robustproto eval --report`."),
    label: list[str] = typer.Option(None, "--label", help="Legend name per report, in order; without it, its model."),
    out: str = typer.Option("curves.png", "--out", help="PNG to write."),
) -> None:
    """Robustness curves of several models on one plot (one panel per norm), from their eval reports."""
    _writable(out, "out")
    loaded = []
    for report in reports:
        path = Path(report)
        if not path.is_file():
            raise MissingFileError(f"reports: no report at {path}; pass files written by `robustproto eval --report`")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UsageError(f"reports: {path} is not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise UsageError(f"reports: {path} is not a report of `robustproto eval` (no results list)")
        loaded.append(data)
    if label and len(label) != len(loaded):
        raise UsageError(f"label: {len(label)} given for {len(loaded)} reports; give one per report or none")
    typer.echo(f"wrote {robustproto.save_robustness_curves(loaded, out, label or None)}")


def main() -> None:
    """Entry point: run the app. Click prints its usage errors (exit 2); a RobustProtoError is one line,
    ``error: ...`` (exit 2), after its traceback with ``--debug``/``ROBUSTPROTO_DEBUG=1``; anything else is a bug
    and propagates with its traceback."""
    try:
        app()
    except RobustProtoError as exc:
        if _state["debug"]:
            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
