"""Pictures of what a model learned: prototypes as images, or the training images nearest to them.

Matplotlib with the headless Agg backend; every function writes one PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .attacks import build_attack, max_distance, parse_attack
from .config import normalize_norm
from .errors import UsageError
from .evaluation import collect, predict, run_attack
from .head import squared_euclidean
from .model import ProtoModel
from .utils import eval_mode, model_device

__all__ = ["adversarial_rows", "prototype_images", "plot_adversarial", "plot_prototypes", "run_data"]


def _figure_module():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def run_data(run: str | Path, split: str = "train", dataset: str | None = None, data_dir: str | None = None,
             max_samples: int | None = None):
    """A split of the dataset a trained run used (``OUT/model.safetensors``'s config), without augmentation.

    ``dataset``/``data_dir`` replace the run's own; ``max_samples`` defaults to the run's
    ``max_train_samples``/``max_test_samples``. The run's ``img_size`` (and, for a timm dataset spec, its
    ``interpolation``: timm's evaluation transform) is kept, so the images fit the model.
    """
    from .checkpoint import read_metadata
    from .data import load_split

    config = read_metadata(run)["config"]
    limit = config.get("max_train_samples" if split == "train" else "max_test_samples")
    return load_split(dataset or config.get("dataset", "mnist-small"), split,
                      data_dir if data_dir is not None else config.get("data_dir"),
                      img_size=config.get("img_size"), max_samples=max_samples or limit, augment="none",
                      interpolation=config.get("interpolation"))


def _head_prototypes(model: ProtoModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's prototypes ``(P, embed_dim)`` and their class labels ``(P,)``."""
    head = model.head
    protos = getattr(head, "prototypes", None)
    if not isinstance(protos, torch.Tensor) or protos.ndim != 2:
        raise UsageError(
            f"head '{model.spec.get('head', type(head).__name__)}' has no prototypes to show "
            "(a prototype head exposes a `prototypes` tensor of shape (P, embed_dim))"
        )
    labels = getattr(head, "prototype_labels", None)
    if labels is None:
        if len(protos) != model.num_classes:
            raise UsageError("the head's prototypes carry no `prototype_labels` and are not one per class")
        labels = torch.arange(model.num_classes)
    return protos.detach().float().cpu(), labels.detach().cpu()


def prototype_images(model: ProtoModel, image_shape: tuple[int, int, int]) -> torch.Tensor | None:
    """Prototypes as images ``(P, C, H, W)`` when the embedding *is* the normalised pixels, else ``None``.

    That holds for a parameter-free backbone whose features are the ``C·H·W`` pixels and no
    neck (the ``flatten`` backbone of LVQ on raw pixels): the normalisation is then undone.
    Prototypes are not box-constrained during training, so values outside [0, 1] exist; they
    are clipped for display only.
    """
    pixels = image_shape[0] * image_shape[1] * image_shape[2]
    pixel_space = (
        not any(True for _ in model.backbone.parameters())
        and isinstance(model.neck, torch.nn.Identity)
        and model.embed_dim == pixels
    )
    if not pixel_space:
        return None
    protos, _ = _head_prototypes(model)
    images = protos.view(-1, *image_shape)
    images = images * model.normalize.std.cpu()[0] + model.normalize.mean.cpu()[0]
    return images.clamp(0, 1)


def _show_image(ax, image: torch.Tensor) -> None:
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(image.permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


@torch.no_grad()
def plot_prototypes(model: ProtoModel, path: str | Path, data=None, neighbours: int = 6,
                    max_prototypes: int = 40, batch_size: int = 256) -> Path:
    """Draw the prototypes of ``model`` into ``path`` (PNG).

    On a pixel-space model (``flatten``) the prototypes themselves are drawn, one per cell,
    titled with their class. On a deep backbone, each row shows the ``neighbours`` images of
    ``data`` (a dataset of ``(image, label)``) nearest to one prototype in embedding space —
    the interpretability argument of the prototype papers. At most ``max_prototypes`` are drawn
    (the first of each class first).
    """
    for key, value in (("neighbours", neighbours), ("max_prototypes", max_prototypes)):
        if value < 1:
            raise UsageError(f"{key}: must be at least 1, got {value}")
    with eval_mode(model):
        return _plot_prototypes(model, path, data, neighbours, max_prototypes, batch_size)


def _plot_prototypes(model: ProtoModel, path: str | Path, data, neighbours: int, max_prototypes: int,
                     batch_size: int) -> Path:
    plt = _figure_module()
    protos, labels = _head_prototypes(model)
    classes = list(getattr(data, "classes", []) or range(model.num_classes))
    order = torch.argsort(torch.arange(len(labels)) % max(1, len(labels) // model.num_classes), stable=True)
    order = order[:max_prototypes]
    if data is None:
        raise UsageError("show prototypes needs data: the image shape, and the images nearest to each prototype")
    image_shape = tuple(data[0][0].shape)
    images = prototype_images(model, image_shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if images is not None:
        cols = min(10, len(order))
        rows = (len(order) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, p in zip(axes.flat, order.tolist()):
            ax.axis("on")
            _show_image(ax, images[p])
            ax.set_title(str(classes[int(labels[p])]), fontsize=9)
        fig.suptitle("prototypes (pixel space, clipped to [0, 1])", fontsize=10)
    else:
        device = model_device(model)
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size)
        best_d = torch.full((len(order), neighbours), float("inf"))
        best_i = torch.zeros((len(order), neighbours), dtype=torch.long)
        seen = 0
        for x, _ in loader:
            d = squared_euclidean(protos[order].to(device), model.embed(x.to(device))).cpu()
            idx = torch.arange(seen, seen + len(x)).expand(len(order), -1)
            all_d, all_i = torch.cat([best_d, d], 1), torch.cat([best_i, idx], 1)
            best_d, pick = all_d.topk(neighbours, dim=1, largest=False)
            best_i = all_i.gather(1, pick)
            seen += len(x)
        fig, axes = plt.subplots(len(order), neighbours, figsize=(1.3 * neighbours, 1.4 * len(order)), squeeze=False)
        for row, p in enumerate(order.tolist()):
            for col in range(neighbours):
                ax = axes[row, col]
                image, label = data[int(best_i[row, col])]
                _show_image(ax, image)
                if col == 0:
                    ax.set_ylabel(f"proto {p}\n{classes[int(labels[p])]}", fontsize=8)
                ax.set_title(str(classes[int(label)]), fontsize=7)
        fig.suptitle("training images nearest to each prototype (embedding space)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def adversarial_rows(model: torch.nn.Module, data, attacks: list[str], eps: list[float], norm: str = "Linf",
                     n_images: int = 10, batch_size: int = 128) -> list[tuple[str, torch.Tensor, torch.Tensor,
                                                                             torch.Tensor | None, torch.Tensor]]:
    """The rows of :func:`plot_adversarial`: ``(label, images, predictions, distances or None, labels)``.

    The first row is the first ``n_images`` correctly classified images of ``data``; then one row per
    fixed-budget attack and ε, and one per minimal-perturbation attack (with its distances). The
    attacks are those of :mod:`robustproto.attacks`, built by :func:`~robustproto.attacks.build_attack` and run
    by :func:`~robustproto.evaluation.run_attack` (same names, defaults and verification of every output as
    ``robustproto eval``); where an attack finds no adversarial the clean image stays. Bad names, norms and
    budgets are :class:`~robustproto.errors.UsageError`, raised before any image is attacked.
    """
    norm = normalize_norm(norm)
    budgets = []
    for name in attacks:
        spec = parse_attack(name, {}, norm=norm).spec
        budgets.append((name, [None] if spec.minimal else list(eps)))
        if not budgets[-1][1]:
            raise UsageError(f"attack '{name}' needs --eps (a fixed-budget attack)")
    device = model_device(model)
    with eval_mode(model):
        x, y = collect(data, None, batch_size)
        correct = (predict(model, x, batch_size, device) == y).nonzero().squeeze(1)[:n_images]
        if len(correct) == 0:
            raise UsageError("show adversarial: the model classifies none of the images correctly")
        x, y = x[correct], y[correct]
        with torch.no_grad():
            num_classes = int(model(x[:1].to(device)).shape[1])
        rows = [("clean", x, y, None, y)]
        for name, values in budgets:
            for e in values:
                budget = e if e is not None else max_distance(norm, x.shape[1:])
                out = run_attack(build_attack(name, model, budget, norm, num_classes), model, x, y, e, norm,
                                 batch_size, device)
                label = f"{name}\nε={e:g}" if e is not None else f"{name}\n(minimal)"
                rows.append((label, out.examples, predict(model, out.examples, batch_size, device),
                             None if e is not None else out.distance, y))
    return rows


def plot_adversarial(model: torch.nn.Module, data, path: str | Path, attacks: list[str], eps: list[float],
                     norm: str = "Linf", n_images: int = 10, batch_size: int = 128) -> Path:
    """A grid like Fig. 1 of Saralajew et al. 2019: clean images (top row) and, per attack and ε, their
    adversarial versions (:func:`adversarial_rows`), each titled with the model's prediction (red where
    it differs from the label; minimal attacks add the distance)."""
    plt = _figure_module()
    rows = adversarial_rows(model, data, attacks, eps, norm, n_images, batch_size)
    classes = list(getattr(data, "classes", []) or [])
    columns = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.2 * columns + 1.2, 1.35 * len(rows)), squeeze=False)
    for r, (label, images, pred, distance, y) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            _show_image(ax, images[c].cpu())
            shown = str(classes[int(pred[c])]) if classes else str(int(pred[c]))
            if distance is not None and torch.isfinite(distance[c]):
                shown += f" ({float(distance[c]):.2g})"
            ax.set_title(shown, fontsize=7, color="red" if int(pred[c]) != int(y[c]) else "black")
        axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"adversarial examples ({normalize_norm(norm)}); title: prediction, red if wrong", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
