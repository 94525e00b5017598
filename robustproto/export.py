"""A trained run as a folder others can load: Hugging Face's layout, a model card with the run's results, and an
optional upload to the Hub.

``DIR/model.safetensors``  the weights, with robustproto's metadata (spec, training config, plugin sources)
``DIR/config.json``        timm's model config (``architecture``, ``num_classes``, ``model_args``, ``pretrained_cfg``
                           with the model's own ``mean``/``std`` and input size), beside a ``robustproto`` key
``DIR/README.md``          the model card: ``model-index`` front matter with the eval and certify results

Two loaders read the same folder. A model whose head scores are affine in the embedding
(``Head.scores_affine_in_embedding``: the ``linear`` head) is written as the plain timm model ``architecture`` with
``num_classes`` classes, its classifier set to the head with the linear neck folded in (``fc∘neck`` is one affine
map, ``W_fc·W_neck`` and ``W_fc·b_neck + b_fc``, exact up to float rounding): ``timm.create_model("local-dir:DIR",
pretrained=True)`` (or ``"hf-hub:REPO"``) computes the ProtoModel's scores on images normalised with the
``pretrained_cfg`` mean and std, as timm's transforms do. The tensors keep timm's names, so timm loads the file
strictly; robustproto's spec and the name of each tensor in the ProtoModel travel in the safetensors metadata
(``state_dict_names``), which timm does not read, so ``robustproto.load(DIR)`` rebuilds the model from the file alone,
as it does a run folder (a model without the neck: its embedding is the backbone's features). timm's config reader
takes only the keys it knows from config.json, so the ``robustproto`` key there (the spec and training config, for
people and tools) stays out of its way. Any other head (prototype heads) has no timm equivalent: its
``model.safetensors`` is the run's own checkpoint, its config.json names no timm architecture (only ``num_classes``
and the ``robustproto`` key), and ``robustproto.load(DIR)`` reads it.

Backbones that robustproto's plugins register (``kp_cnn_mnist``, ``mlp``, ...) are timm models only once their module
is imported: call ``robustproto.load_backbones()`` before ``timm.create_model``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .checkpoint import CONFIG_FILE, METRICS_FILE, MODEL_FILE, build_model, load, read_jsonl, read_metadata
from .data import default_img_size
from .errors import MissingFileError, UsageError
from .evaluation import to_jsonable
from .utils import describe_error, package_version

__all__ = ["CARD_FILE", "export", "push_folder"]

CARD_FILE = "README.md"
FORMAT_VERSION = 1

# Native image size of each dataset (robustproto.data resizes only when img_size is set): the exported input size.
_NATIVE_SIZE = {"mnist-small": 28, "mnist": 28, "fashion-mnist": 28, "cifar10": 32, "cifar100": 32, "imagefolder": 224}
# The Hub's dataset ids of the datasets robustproto reads (model-index `dataset.type`).
_HUB_DATASET = {"mnist-small": "mnist", "mnist": "mnist", "fashion-mnist": "fashion_mnist", "cifar10": "cifar10",
                "cifar100": "cifar100"}
# pretrained_cfg fields that describe the weights timm ships for an architecture, not the ones exported here.
_SOURCE_FIELDS = ("tag", "license", "description", "origin_url", "paper_name", "paper_ids", "notes",
                  "test_input_size", "test_crop_pct", "pool_size", "test_pool_size", "label_names",
                  "label_descriptions")


class _NotTimm(Exception):
    """Why the model has no exact plain-timm equivalent (said in the model card)."""


def export(run: str | Path, out_dir: str | Path, reports: Sequence[str | Path] | None = None, force: bool = False,
           push_to_hub: str | None = None, private: bool = False) -> dict[str, Any]:
    """Write the trained model of ``run`` (a run folder or its ``model.safetensors``) to ``out_dir`` in Hugging Face's
    layout (see the module docstring), and upload it to the Hub repo ``push_to_hub`` when given.

    Args:
        reports: eval/certify report JSON files for the model card; ``None``: every report (``*.json`` written by
            ``robustproto eval``/``certify``) directly in the run folder.
        force: replace the contents of a non-empty ``out_dir`` (else that is refused).
        push_to_hub: ``user/name`` of a Hub model repo, created if missing (``private`` sets its visibility).

    The folder is written under a temporary name beside ``out_dir`` and renamed into place, so ``out_dir`` is
    complete or untouched. Returns ``{"folder", "timm_loadable", "not_timm_because", "reports", "url"}``.
    """
    meta = read_metadata(run)  # the checkpoint's own errors, before anything is written
    source = Path(run) if Path(run).suffix == ".safetensors" and Path(run).is_file() else Path(run) / MODEL_FILE
    out = Path(out_dir)
    _check_out_dir(out, source.parent, force)
    found = _reports(source.parent, reports)
    model = load(source)
    input_size = _input_size(model, meta["config"])
    try:
        net = _timm_model(model, input_size)
        spec, names = _state_dict_names(net, model)
        not_timm = None
    except _NotTimm as exc:
        net, spec, names, not_timm = None, dict(model.spec), None, str(exc)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        if net is None:
            shutil.copyfile(source, tmp / MODEL_FILE)
            config = {"num_classes": model.num_classes}
        else:
            _write_timm(net, model, spec, names, meta, tmp)
            config = _timm_config(net, tmp)
        config["robustproto"] = {"format_version": FORMAT_VERSION, "robustproto_version": package_version(),
                                 "timm_loadable": net is not None, "not_timm_because": not_timm, "spec": spec,
                                 "train_config": meta["config"], "plugins": meta["plugins"]}
        (tmp / CONFIG_FILE).write_text(json.dumps(to_jsonable(config), indent=2) + "\n")
        metrics = read_jsonl(source.parent / METRICS_FILE)
        neck = f"a linear neck to {model.embed_dim} dimensions, " if isinstance(model.neck, nn.Linear) else ""
        card = _model_card(push_to_hub or out.name, spec, meta, [r for _, r in found], input_size, neck, not_timm,
                           metrics[-1] if metrics else None, out, push_to_hub)
        (tmp / CARD_FILE).write_text(card)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    url = push_folder(out, push_to_hub, private) if push_to_hub else None
    return {"folder": out, "timm_loadable": net is not None, "not_timm_because": not_timm,
            "reports": [path for path, _ in found], "url": url}


# ------------------------------------------------------------------ the folder
def _check_out_dir(out: Path, run_dir: Path, force: bool) -> None:
    if out.is_file():
        raise UsageError(f"out_dir: {out} is a file; pass a new or empty folder")
    resolved, run_resolved = out.resolve(), run_dir.resolve()
    if resolved == run_resolved or resolved in run_resolved.parents:
        raise UsageError(f"out_dir: {out} is or holds the run folder {run_dir}; export to another folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"out_dir: {out} is not empty; pass --force (force=True) to replace its contents, or a new "
                         "folder")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` is renamed away first and deleted after."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old)


def _input_size(model: nn.Module, config: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images the model was trained on: the run's ``img_size`` or its dataset's own size, else
    (a model saved without a training config) the backbone's default."""
    channels = int(model.normalize.mean.shape[1])
    dataset = config.get("dataset", "")
    size = config.get("img_size") or _NATIVE_SIZE.get(dataset) or (default_img_size(dataset) if dataset else None)
    if size:
        return channels, int(size), int(size)
    height, width = (getattr(model.backbone, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[1:]
    return channels, int(height), int(width)


def _backbone_kwargs(spec: Mapping[str, Any]) -> dict[str, Any]:
    # the weights come from the exported file: never let a loader download timm's pretrained ones first
    return {k: v for k, v in spec["backbone_kwargs"].items() if k != "pretrained"}


def _folded(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map from the backbone's features to the scores: the head's, with a linear neck folded in."""
    weight, bias = (t.detach().double() for t in model.head.affine_map())
    if isinstance(model.neck, nn.Linear):
        neck_w = model.neck.weight.detach().double()
        neck_b = model.neck.bias.detach().double() if model.neck.bias is not None else neck_w.new_zeros(len(neck_w))
        weight, bias = weight @ neck_w, weight @ neck_b + bias
    elif not isinstance(model.neck, nn.Identity):
        raise _NotTimm(f"its neck is a {type(model.neck).__name__}, not a linear layer that folds into the classifier")
    return weight, bias


def _timm_model(model: nn.Module, input_size: tuple[int, int, int]) -> nn.Module:
    """The timm model of the ProtoModel's backbone with ``num_classes`` classes, its classifier the folded head, and
    a pretrained cfg with the model's normalisation; checked to compute the same scores. :class:`_NotTimm` when
    there is none."""
    import timm

    spec = model.spec
    if not getattr(model.head, "scores_affine_in_embedding", False):
        raise _NotTimm(f"its head '{spec['head']}' is not a linear classifier (timm has no prototype heads)")
    weight, bias = _folded(model)
    overlay: dict[str, Any] = {k: None for k in _SOURCE_FIELDS}
    # the images the model saw: the dataset's size, resized bilinearly if at all (robustproto.data), never cropped
    overlay.update(mean=tuple(spec["mean"]), std=tuple(spec["std"]), input_size=tuple(input_size), crop_pct=1.0,
                   interpolation="bilinear", num_classes=spec["num_classes"])
    net = timm.create_model(spec["backbone"], num_classes=spec["num_classes"], pretrained_cfg_overlay=overlay,
                            **_backbone_kwargs(spec))
    classifier = net.get_classifier()
    name = next((n for n, m in net.named_modules() if m is classifier), None)
    if not isinstance(classifier, nn.Linear) or classifier.bias is None or name is None:
        raise _NotTimm(f"timm's {spec['backbone']} has no linear classifier with a bias to hold the head")
    net.pretrained_cfg["classifier"] = name
    body = model.backbone.state_dict()
    own = {k: v for k, v in net.state_dict().items() if not k.startswith(name + ".")}
    if set(own) != set(body) or any(own[k].shape != body[k].shape for k in own):
        raise _NotTimm(f"timm's {spec['backbone']} with a classifier holds other weights than the backbone without")
    if tuple(classifier.weight.shape) != tuple(weight.shape):
        raise _NotTimm(f"timm's classifier takes {classifier.in_features} features, the head {weight.shape[1]}")
    dtype = classifier.weight.dtype
    net.load_state_dict({**body, f"{name}.weight": weight.to(dtype), f"{name}.bias": bias.to(dtype)}, strict=True)
    net.eval()
    x = torch.rand(2, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model(x), net(model.normalize(x))
    scale = float(expected.abs().max()) + 1.0
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * scale):
        raise _NotTimm(f"timm's {spec['backbone']} with the head as its classifier computes other scores than the "
                       "model (its classifier does not sit on the pooled features)")
    return net


def _state_dict_names(net: nn.Module, model: nn.Module) -> tuple[dict[str, Any], dict[str, str]]:
    """The spec of the neck-less ProtoModel that ``net``'s weights rebuild, and the name in it of each of ``net``'s
    tensors (the ``state_dict_names`` :func:`robustproto.load` maps the file by)."""
    spec = {**model.spec, "embed_dim": int(net.num_features), "backbone_kwargs": _backbone_kwargs(model.spec)}
    rebuilt = build_model(spec)
    head = {id(p): n for n, p in rebuilt.head.named_parameters()}
    weight, bias = (head.get(id(t)) for t in rebuilt.head.affine_map())
    if not isinstance(rebuilt.neck, nn.Identity) or {weight, bias} != set(rebuilt.head.state_dict()):
        raise _NotTimm(f"its head '{spec['head']}' holds more than the weight and bias of its affine map")
    classifier = net.pretrained_cfg["classifier"]
    renamed = {f"{classifier}.weight": f"head.{weight}", f"{classifier}.bias": f"head.{bias}"}
    return spec, {k: renamed.get(k, f"backbone.{k}") for k in net.state_dict()}


def _write_timm(net: nn.Module, model: nn.Module, spec: dict[str, Any], names: dict[str, str],
                meta: Mapping[str, Any], folder: Path) -> None:
    """Save ``net``'s state dict under timm's names with robustproto's metadata, and check that
    :func:`robustproto.load` rebuilds the model's scores from it."""
    from safetensors.torch import save_file

    metadata = {"format": "robustproto", "robustproto_version": package_version(),
                "spec": json.dumps(spec, sort_keys=True), "plugins": json.dumps(meta["plugins"], sort_keys=True),
                "config": json.dumps(meta["config"], sort_keys=True),
                "state_dict_names": json.dumps(names, sort_keys=True)}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / MODEL_FILE), metadata=metadata)
    x = torch.rand(2, *net.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = model(x), load(folder)(x)
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * (float(expected.abs().max()) + 1.0)):
        raise RuntimeError("the exported model, loaded back by robustproto.load, computes other scores than the run's")


def _timm_config(net: nn.Module, folder: Path) -> dict[str, Any]:
    """timm's own config.json of ``net`` (``save_config_for_hf``, the writer its ``local-dir``/``hf-hub`` reader
    matches), as a dict."""
    from timm.models._hub import save_config_for_hf

    save_config_for_hf(net, str(folder / CONFIG_FILE))
    return json.loads((folder / CONFIG_FILE).read_text())


# ------------------------------------------------------------------ reports and the model card
def _report_kind(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("results"), list) and "clean_accuracy" in data:
        return "eval"
    if isinstance(data.get("certified_accuracy"), dict):
        return "certify"
    return None


def _reports(run_dir: Path, given: Sequence[str | Path] | None) -> list[tuple[Path, dict[str, Any]]]:
    """``(path, report)`` of the given eval/certify reports, or of those directly in the run folder."""
    found = []
    if given is None:
        for path in sorted(run_dir.glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue  # not a report: a run folder may hold any other file
            if path.name != CONFIG_FILE and _report_kind(data):
                found.append((path, data))
    else:
        for path in map(Path, given):
            if not path.is_file():
                raise MissingFileError(f"reports: no report at {path}; pass files written by `robustproto eval "
                                       "--report` or `robustproto certify --report`")
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise UsageError(f"reports: {path} is not valid JSON ({exc})") from exc
            if not _report_kind(data):
                raise UsageError(f"reports: {path} is not a report of `robustproto eval` or `robustproto certify`")
            found.append((path, data))
    for path, data in found:  # a card must not present an evaluation as done when some of its attacks never ran
        if data.get("unfinished"):
            raise UsageError(f"reports: {path} is unfinished (not run: {', '.join(data['unfinished'])}); rerun "
                             "`robustproto eval`, or pass --report with complete reports only")
    return found


def _dataset(report: Mapping[str, Any]) -> dict[str, Any]:
    name = str(report.get("dataset", "unknown"))
    return {"name": f"{name} (test split, {report.get('n_samples')} images)", "type": _HUB_DATASET.get(name, name),
            "split": "test", "args": {"n_samples": report.get("n_samples")}}


def _eval_metrics(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Clean accuracy, and per attack, norm and ε the robust accuracy, its settings as recorded in ``args``."""
    metrics = [{"type": "accuracy", "value": report["clean_accuracy"], "name": "clean accuracy"}]
    recorded = report.get("settings", {}).get("attacks", {})
    for row in report["results"]:
        settings = {k: v for k, v in recorded.get(f"{row['attack']}/{row['norm']}", {}).items() if k != "about"}
        args = {**settings, "norm": row["norm"], "eps": row["eps"], **({"loss": row["loss"]} if "loss" in row else {})}
        metrics.append({"type": "robust_accuracy", "value": row["robust_accuracy"],
                        "name": f"{row['attack']} ({row['norm']}, eps={row['eps']:g})", "args": args})
    return metrics


def _certify_metrics(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    metrics = [{"type": "accuracy", "value": report["clean_accuracy"], "name": "clean accuracy"}]
    for radius, value in report["certified_accuracy"].items():
        metrics.append({"type": "certified_accuracy", "value": value,
                        "name": f"certified accuracy ({report.get('norm', 'L2')}, radius={radius})",
                        "args": {"norm": report.get("norm", "L2"), "radius": float(radius),
                                 "method": report.get("method"), "lipschitz_constant": report.get("lipschitz_constant")}})
    return metrics


def _yaml_key(key: str) -> str:
    return key if key.replace("-", "").replace("_", "").isalnum() and key[:1].isalpha() else json.dumps(key)


def _yaml(obj: Any, pad: str = "") -> list[str]:
    """Block-style YAML lines of nested dicts and lists; every scalar is written as JSON, which YAML reads alike."""
    def block(v: Any) -> bool:
        return isinstance(v, (Mapping, list)) and len(v) > 0

    lines = []
    items = obj.items() if isinstance(obj, Mapping) else ((None, v) for v in obj)
    for key, value in items:
        head = f"{pad}{_yaml_key(key)}:" if key is not None else f"{pad}-"
        if not block(value):
            lines.append(f"{head} {json.dumps(value, ensure_ascii=False)}")
        elif key is not None:
            lines += [head] + _yaml(value, pad + "  ")
        else:  # a list item that is a block: its first line goes on the dash
            sub = _yaml(value, pad + "  ")
            lines += [f"{head} {sub[0].lstrip()}"] + sub[1:]
    return lines


def _table(rows: list[list[Any]], header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + \
           ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _model_card(name: str, spec: Mapping[str, Any], meta: Mapping[str, Any], reports: Sequence[Mapping[str, Any]],
                input_size: tuple[int, int, int], neck: str, not_timm: str | None,
                last_epoch: Mapping[str, Any] | None, folder: Path, repo: str | None) -> str:
    """The README.md of an exported model: Hub metadata (``model-index``, one result per report, each attack's
    settings in its metric's name and ``args``), how to load the model, and the results as tables."""
    reports = [to_jsonable(r) for r in reports]
    config = meta["config"]
    reports = sorted(reports, key=lambda r: _report_kind(r) != "eval")  # attacks first, then certificates
    results: list[dict[str, Any]] = []
    for report in reports:
        metrics = _eval_metrics(report) if _report_kind(report) == "eval" else _certify_metrics(report)
        same = [r for r in results if r["dataset"] == _dataset(report)]
        if same:  # the Hub merges results on the same data: one entry per dataset, each metric once
            same[0]["metrics"] += [m for m in metrics if m not in same[0]["metrics"]]
        else:
            results.append({"task": {"type": "image-classification", "name": "Image Classification"},
                            "dataset": _dataset(report), "metrics": metrics})
    front: dict[str, Any] = {"library_name": "timm"} if not_timm is None else {}
    front["tags"] = ["image-classification", "robustproto", "adversarial-robustness"] + (["timm"] if not_timm is None
                                                                                          else [])
    if results:  # the Hub expects results in a model-index: none without a report
        front["model-index"] = [{"name": name, "results": results}]
    source = meta["plugins"].get("backbone", {}).get("source")
    where = f"hf-hub:{repo}" if repo else f"local-dir:{folder}"
    regs = ", ".join(r[0] if isinstance(r, (list, tuple)) else str(r) for r in config.get("reg") or []) or "none"
    trained = (f", trained with robustproto {meta.get('robustproto_version', '')} on `{config['dataset']}` for "
               f"{config.get('epochs')} epoch(s) (regularizers: {regs})" if config.get("dataset") else "")
    lines = ["---", *_yaml(front), "---", "", f"# {name}", "",
             f"A `{spec['backbone']}` backbone with {neck}a `{spec['head']}` head for {spec['num_classes']} "
             f"classes{trained}. It takes {input_size[1]}×{input_size[2]} images with {input_size[0]} channel(s) in "
             f"[0, 1], normalised with mean {spec['mean']} and std {spec['std']}."]
    if last_epoch and "test_acc" in last_epoch:
        lines += ["", f"Test accuracy after the last epoch (the run's `metrics.jsonl`): {last_epoch['test_acc']:.4f}."]
    lines += ["", "## How to use", ""]
    if not_timm is None:
        plugin = source not in (None, "timm")
        lines += ["With timm (the scores equal robustproto's; the linear neck, if any, is folded into the classifier):",
                  "", "```python", "import timm, torch"]
        if plugin:
            lines += [f"import robustproto; robustproto.load_backbones()  # `{spec['backbone']}` comes from "
                      f"{source}: register it with timm first"]
        lines += [f'model = timm.create_model("{where}", pretrained=True).eval()',
                  "cfg = model.pretrained_cfg",
                  'mean, std = (torch.tensor(cfg[k]).view(1, -1, 1, 1) for k in ("mean", "std"))',
                  "scores = model((images - mean) / std)  # images in [0, 1], shape (B, C, H, W)", "```", ""]
    else:
        lines += [f"timm cannot load this model: {not_timm}. Load it with robustproto:", ""]
    folded = " the neck is folded into the head, so `model.embed` gives the backbone's features;" if (
        neck and not_timm is None) else ""
    lines += [f"With robustproto (normalisation inside the model; images in [0, 1];{folded} the scores are the "
              "run's):", "", "```python", "import robustproto"]
    if repo:
        lines += ["from huggingface_hub import snapshot_download",
                  f'model = robustproto.load(snapshot_download("{repo}"))']
    else:
        lines += [f'model = robustproto.load("{folder}")']
    lines += ["scores = model(images)", "```", "", "## Results", ""]
    if not reports:
        lines += ["No eval or certify report was found in the run folder (`robustproto eval --report`, "
                  "`robustproto certify --report`)."]
    for report in reports:
        if _report_kind(report) == "eval":
            lines += [f"`robustproto eval` on {report.get('dataset')} ({report.get('n_samples')} test images): clean "
                      f"accuracy {report['clean_accuracy']:.4f}. Attacks in pixel units on images in [0, 1]; the "
                      "settings of each attack as recorded in the report:", ""]
            rows = [[r["attack"], r["norm"], f"{r['eps']:g}", f"{r['robust_accuracy']:.4f}", r.get("loss", "")]
                    for r in report["results"]]
            lines += _table(rows, ["attack", "norm", "eps", "robust accuracy", "loss"]) + [""]
            for key, settings in report.get("settings", {}).get("attacks", {}).items():
                shown = {k: v for k, v in settings.items() if k not in ("about", "attack", "norm")}
                lines.append(f"- `{key}`: {json.dumps(shown, sort_keys=True)}")
            medians = report.get("median_distance") or {}
            if medians:
                lines += ["", f"Median minimal adversarial distance (Saralajew et al.'s median-δ): "
                              f"{json.dumps(medians, sort_keys=True)}"]
        else:
            lines += [f"`robustproto certify` on {report.get('dataset')} ({report.get('n_samples')} test images): "
                      f"{report.get('method')}, Lipschitz bound L = {report.get('lipschitz_constant')}, median "
                      f"certified {report.get('norm', 'L2')} radius {report.get('median_radius')}.", ""]
            rows = [[radius, f"{value:.4f}"] for radius, value in report["certified_accuracy"].items()]
            lines += _table(rows, [f"{report.get('norm', 'L2')} radius", "certified accuracy"])
        lines += [f"- warning: {w}" for w in report.get("warnings", [])] + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


# ------------------------------------------------------------------ the Hub
def push_folder(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload ``folder`` to the Hub model repo ``repo_id`` (created if missing); returns the repo's URL.

    Needs ``huggingface_hub`` and a login (``hf auth login`` or ``HF_TOKEN``). Whatever the upload raises is
    reported as one :class:`UsageError`: the Hub client raises from several HTTP stacks across its versions, with no
    common base class, and no network, no login or a refused repo name are not robustproto bugs (``--debug`` shows
    the traceback)."""
    try:
        from huggingface_hub import HfApi
    except ImportError as exc:
        raise UsageError("push_to_hub: huggingface_hub is not installed; pip install huggingface_hub, or leave out "
                         "--push-to-hub (the folder is written either way)") from exc
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=url.repo_id, folder_path=str(folder), commit_message="Upload model from robustproto")
    except Exception as exc:
        raise UsageError(f"push_to_hub: cannot upload {folder} to {repo_id} ({describe_error(exc)}); check the network "
                         f"and your Hugging Face login (hf auth login, or HF_TOKEN), then run the export again or "
                         f"upload the folder with `hf upload {repo_id} {folder}`") from exc
    return str(url)
