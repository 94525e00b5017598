"""benchmarks/reproduce.py: what each scale runs for every recipe is a valid training config and eval protocol."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from robustproto.config import load_recipe, resolve_config
from robustproto.config import EvalConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))


@pytest.fixture(scope="module")
def reproduce(load_benchmark):
    return load_benchmark("reproduce")


@pytest.fixture
def data_dir(tmp_path):
    """A data folder that has every dataset the recipes name (CIFAR in torchvision's layout, so nothing unpacks) and
    every pretrained-weights file they name (empty: nothing is trained here)."""
    for name in ("MNIST", "cifar-10-batches-py", "cifar-100-python", "imagenette2-160/train", "imagenette2-160/val"):
        (tmp_path / name).mkdir(parents=True)
    for path in RECIPES:
        weights = resolve_config(load_recipe(path)).pretrained_weights
        if weights:
            (tmp_path / weights).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / weights).touch()
    return tmp_path


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_full_scale_runs_the_recipe_as_written(reproduce, data_dir, tmp_path, path):
    recipe = resolve_config(load_recipe(path))
    cfg, changes, table = reproduce.plan_experiment(path, "full", data_dir, tmp_path / "runs")
    assert changes == {} and table == dict(recipe.eval)
    as_written = recipe.to_dict()
    differing = {k for k, v in cfg.to_dict().items() if as_written[k] != v}
    assert differing == {"data_dir", "output"} | ({"pretrained_weights"} if recipe.pretrained_weights else set())
    # the Imagenette-160 recipes read the unpacked imagenette2-160 folder as an image folder
    folder = data_dir / "imagenette2-160" if recipe.dataset == "imagefolder" else data_dir
    assert cfg.data_dir == str(folder) and cfg.output == str(tmp_path / "runs" / path.stem)
    if recipe.pretrained_weights:  # the recipe's relative path, found under --data-dir
        assert cfg.pretrained_weights == str(data_dir / recipe.pretrained_weights)


def test_small_scale_shrinks_every_recipe_into_a_valid_protocol(reproduce, data_dir, tmp_path):
    shared_table = copy.deepcopy(reproduce.SMALL)
    for path in RECIPES:
        recipe = resolve_config(load_recipe(path))
        cfg, changes, table = reproduce.plan_experiment(path, "small", data_dir, tmp_path / "runs")
        settings = EvalConfig.resolve(table)  # as `robustproto eval --config` would
        as_written = EvalConfig.resolve(recipe.eval)
        assert settings.n_samples < as_written.n_samples, path.stem
        assert cfg.epochs < recipe.epochs and cfg.max_train_samples, path.stem
        for key, value in changes.items():  # every change is applied, and listed in the report
            if not key.startswith("eval."):
                assert cfg.to_dict()[key] == value, (path.stem, key)
        # which attacks run may change, never their strength (steps, restarts, queries)
        assert settings.attack_options == as_written.attack_options
    assert reproduce.SMALL == shared_table  # planning one recipe never changes another's


def test_imagenette_recipes_are_skipped_with_a_reason_without_their_data(reproduce, tmp_path):
    names = [p.stem for p in RECIPES if p.stem.startswith("khalid-imagenette-")]
    assert len(names) == 4 and {reproduce.family(n) for n in names} == {"khalid-imagenette"}
    outcomes = {n: reproduce.plan_experiment(ROOT / "recipes" / f"{n}.toml", "small", tmp_path, tmp_path / "runs")
                for n in names}
    for out in outcomes.values():
        assert isinstance(out, reproduce.Outcome) and out.skipped == \
            "imagenette2-160 (Imagenette-160) is not in --data-dir (no network to download it)"
    assert [row[1] for row in reproduce.khalid_rows(outcomes)] == ["not run"] * 4
    assert {row[3] for row in reproduce.summary_rows(outcomes)} == {"not run"}


def test_reports_name_no_folder_of_the_machine(reproduce, tmp_path):
    runs = tmp_path / "runs"
    (runs / "hein-mnist-mlp-none").mkdir(parents=True)
    skipped = reproduce.plan_experiment(ROOT / "recipes" / "serban-cifar100-repulsive.toml", "small", tmp_path, runs)
    outcome = reproduce.Outcome("hein-mnist-mlp-none", "small",
                                {"output": str(reproduce.ROOT / "runs" / "x"), "data_dir": str(tmp_path)})
    args = type("Args", (), {"results": tmp_path / "results", "scale": "small", "data_dir": tmp_path})()
    md = reproduce.write_results([skipped, outcome], args)
    text = md.read_text() + (tmp_path / "results" / "reproduction_small.json").read_text()
    assert str(tmp_path) not in text and str(reproduce.ROOT) not in text
    assert "--data-dir" in text


ADVERSARIAL = [p for p in RECIPES if p.stem.split("-")[0] in ("madry", "kp", "wong", "rice", "zhang", "finetune")
               or p.stem.endswith("-pgd-at")]


def test_adversarial_training_recipes_have_their_own_small_families(reproduce, data_dir, tmp_path):
    assert len(ADVERSARIAL) == 17  # 12 on MNIST, Wong, Rice, Zhang, the fine-tuning one, Serban with PGD-AT
    for path in ADVERSARIAL:
        assert reproduce.is_adversarial(path.stem) and reproduce.family(path.stem) in reproduce.SMALL, path.stem
        cfg, changes, table = reproduce.plan_experiment(path, "small", data_dir, tmp_path / "runs")
        settings = EvalConfig.resolve(table)
        norm = reproduce.training_budget(cfg.to_dict())[1]
        assert "autoattack" not in settings.attacks[norm] and "square" in settings.attacks[norm], path.stem
        assert settings.n_samples <= 200
        # the small run still trains at the recipe's ε (warm-ups shortened, never the budget)
        assert reproduce.training_budget(cfg.to_dict()) == \
            reproduce.training_budget(resolve_config(load_recipe(path)).to_dict())
    # the earlier papers keep their families
    assert [reproduce.family(n) for n in ("serban-cifar10-repulsive", "khalid-mnist-glvq", "hein-mnist-mlp-none")] \
        == ["serban", "khalid-mnist", "hein"]
    assert not reproduce.is_adversarial("serban-cifar10-repulsive")


def test_missing_pretrained_weights_skip_the_recipe(reproduce, tmp_path):
    for name in ("MNIST", "cifar-10-batches-py"):
        (tmp_path / name).mkdir()
    path = ROOT / "recipes" / "finetune-resnet18-pgd-at.toml"
    if (ROOT / resolve_config(load_recipe(path)).pretrained_weights).is_file():
        pytest.skip("this checkout holds the weights file")
    skipped = reproduce.plan_experiment(path, "small", tmp_path, tmp_path / "runs")
    assert isinstance(skipped, reproduce.Outcome) and "pretrained weights" in skipped.skipped


def test_adversarial_section_and_summary(reproduce, tmp_path):
    def outcome(name, eps, norm, accuracies):
        report = {"results": [{"attack": a, "eps": eps, "robust_accuracy": acc} for a, acc in accuracies.items()]}
        recipe = resolve_config(load_recipe(ROOT / "recipes" / f"{name}.toml"))
        return reproduce.Outcome(name, "small", recipe.to_dict(), changes={"epochs": 1}, test_acc=0.9, report=report)

    outcomes = {
        "madry-mnist-linear-pgd-at": outcome("madry-mnist-linear-pgd-at", 0.3, "Linf",
                                             {"pgd-20": 0.5, "autoattack": 0.4, "square": 0.6}),
        "rice-cifar10-preact-pgd-at-l2": outcome("rice-cifar10-preact-pgd-at-l2", 0.5, "L2",
                                                 {"pgd-l2-20": 0.3, "square": 0.5}),
        "serban-cifar10-repulsive-pgd-at": outcome("serban-cifar10-repulsive-pgd-at", 8 / 255, "Linf",
                                                   {"pgd-20": 0.2}),
    }
    rows = {(n, q): (paper, ours) for n, q, paper, ours, _ in reproduce.adversarial_rows(outcomes)}
    assert rows[("madry-mnist-linear-pgd-at", "AutoAttack at the training ε")] == (0.885, 0.4)
    assert rows[("madry-mnist-linear-pgd-at", "PGD-20 at the training ε")][1] == 0.5
    assert rows[("rice-cifar10-preact-pgd-at-l2", "PGD-20 at the training ε")][1] == 0.3  # pgd-l2-20 in L2
    assert rows[("rice-cifar10-preact-pgd-at-l2", "AutoAttack at the training ε")] == (0.6768, "not run at this scale")
    assert rows[("serban-cifar10-repulsive-pgd-at", "AutoAttack at the training ε")][0] == "none compared"
    summary = {row[0]: row for row in reproduce.summary_rows(outcomes)}
    assert summary["madry-mnist-linear-pgd-at"][1:] == ("98.5 %", "90.0 %", "AutoAttack at the training ε",
                                                        "88.5 %", "40.0 %")
    args = type("Args", (), {"results": tmp_path / "results", "scale": "small", "data_dir": tmp_path})()
    text = reproduce.write_results(list(outcomes.values()), args).read_text()
    assert "## Adversarial training" in text and "AutoAttack is left out for time" in text


def test_adversarial_mnist_cpu_section_reads_each_runs_method_epochs_and_square_gap(reproduce, tmp_path):
    for name, accuracies in {"kp-mnist-glvq-pgd-at-eps0.3": {"pgd-20": 0.8, "autoattack": 0.7, "square": 0.72},
                             "kp-mnist-linear-fgsm-rs-eps0.1": {"pgd-20": 0.95, "autoattack": 0.94}}.items():
        eps = float(name.rsplit("eps", 1)[1])
        report = {"n_samples": 1000, "clean_accuracy": 0.98,
                  "results": [{"attack": a, "eps": eps, "robust_accuracy": acc} for a, acc in accuracies.items()]}
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
        (tmp_path / f"{name}.1000-points.square.json").write_text(json.dumps(report))  # a single-attack rerun
    (tmp_path / "kp-mnist-glvq-pgd-at-eps0.3.train.log").write_text(
        "training kp_cnn_mnist\nepoch 1/4: loss 2.1  train acc 0.2  test acc 0.9  200 img/s  300.0 s\n"
        "epoch 2/4: loss 1.1  train acc 0.6  test acc 0.95  200 img/s  300.0 s\n")
    rows = [line for line in reproduce.adversarial_mnist_cpu_section(tmp_path) if line.startswith("| kp-mnist")]
    assert rows == ["| kp-mnist-glvq-pgd-at-eps0.3 | glvq | pgd-at | 0.3 | 2 | 10 | 1000 | 98.0 % | 80.0 % | 70.0 % | "
                    "72.0 % | +2.0 points |",
                    "| kp-mnist-linear-fgsm-rs-eps0.1 | linear | fgsm-rs | 0.1 | ? | nan | 1000 | 98.0 % | 95.0 % | "
                    "94.0 % | — |  |"]


def test_certified_radius_is_compared_with_the_distance_of_the_same_point_only(reproduce):
    report = {"distances": {"L2": {"worst_case": [2.0, float("inf"), 0.5, 1.0]}}}
    certificate = {"radii": [1.0, 3.0, 0.25, 0.0]}
    assert reproduce.largest_radius_over_distance(report, certificate) == 0.5  # 1/2 and 0.25/0.5; ∞ and 0 left out
    # eval on 2 points, certify on 4: a fixed subset is sorted by index, so the 2 are not the first 2 of the 4
    assert reproduce.largest_radius_over_distance({"distances": {"L2": {"worst_case": [2.0, 0.5]}}}, certificate) \
        is None


def test_khalid_cpu_section_reports_violations_per_epoch_and_every_attack(reproduce, tmp_path):
    folder = tmp_path / "khalid_mnist_cpu"
    assert reproduce.khalid_cpu_section(folder, "mnist") == []  # not run: no section
    folder.mkdir()
    measured = {"points": 500, "D_over_d": 0.004, "mean_D": 0.03, "mean_d": 7.85, "frobenius_sq_per_pixel": 0.0015,
                "spectral_sq": 0.3, "embedding_rms_sq": 0.5}
    for name, reg, shares, gap in (("glvq-lipschitz-scaled", ["lipschitz:L=0.08"], [0.057, 0.0149], 0.3),
                                   ("linear", [], [None, None], None)):
        epochs = [{"epoch": i + 1, "test_acc": 0.9 + i / 100, "train_acc": 0.9, "violations": v}
                  for i, v in enumerate(shares)]
        (folder / f"{name}.analysis.json").write_text(json.dumps(
            {"run": name, "recipe": "", "train_samples": 12000, "reg": reg, "epochs": epochs,
             "after_training": measured, "prototype_gap_sq": gap}))
        (folder / f"{name}.fgsm.json").write_text(json.dumps({"clean_accuracy": 0.98, "results": [
            {"attack": "fgsm@ce", "eps": 0.1, "robust_accuracy": 0.77},
            {"attack": "fgsm@margin", "eps": 0.1, "robust_accuracy": 0.65}]}))
    (folder / "linear.attacks.json").write_text(json.dumps({"clean_accuracy": 0.99, "n_samples": 200, "results": [
        {"attack": "pgd-40@margin", "eps": 0.1, "robust_accuracy": 0.695},
        {"attack": "square", "eps": 0.1, "robust_accuracy": 0.71},
        {"attack": "autoattack", "eps": 0.1, "robust_accuracy": 0.68}]}))
    lines = reproduce.khalid_cpu_section(folder, "mnist")
    (penalty, _), (linear_penalty, robustness) = ([line for line in lines if line.startswith(f"| {name} |")]
                                                  for name in ("glvq-lipschitz-scaled", "linear"))  # one row a table
    assert "| 5.7 · 1.5 |" in penalty and "| 90 · 91 |" in penalty  # violations and test accuracy per epoch, in %
    assert penalty.endswith("| 0.1 |") and linear_penalty.endswith("| — |")  # D/δ²: GLVQ only
    assert "69.5 %" in robustness and "71.0 %" in robustness and "68.0 %" in robustness and "+3.0 points" in robustness
    assert "200 of them" in "\n".join(lines)


def test_glvq_escape_table_shows_each_variant_from_its_first_window_to_its_last(reproduce, tmp_path):
    assert reproduce.glvq_escape_table(tmp_path / "glvq-escape.json") == []  # not run: no table

    def record(step, share, norm):
        return {"step": step, "test_acc": 0.3, "median_abs_mu": 1e-4, "mean_embedding_norm": norm, "median_spread": 9.0,
                "prototype_norm": 4.33, "min_prototype_gap": 0.4, "train_share_mu_positive": share}
    (tmp_path / "glvq-escape.json").write_text(json.dumps({"sgd": {
        "overrides": {"optimizer": "sgd", "head_opt": {"beta": 10.0}}, "train_samples": 20000, "points": 500,
        "records": [record(0, None, 0.5), record(50, 0.8, 72.0), record(100, 0.6, 80.0), record(300, 0.55, 95.0)]}}))
    lines = reproduce.glvq_escape_table(tmp_path / "glvq-escape.json")
    assert "first 300 steps" in lines[1] and "steps 1–50" in lines[1]
    assert lines[-1].startswith("| sgd | optimizer=sgd, head_opt.beta=10.0 | 80 → 55 % | 30.0 → 30.0 % |")
    assert "| 72 → 95 |" in lines[-1]  # ‖z̄‖ from step 50 to the last step; step 0 (untouched BatchNorm) is left out


def test_gpu_section_reads_each_checks_measure_from_its_report(reproduce, tmp_path):
    (tmp_path / "gpu_checks.log").write_text("NVIDIA H200, 580, 143771 MiB\ntorch 2.11 | timm 1.0\n")
    (tmp_path / "gloro.metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    (tmp_path / "gloro.certify.json").write_text(
        '{"n_samples": 10, "clean_accuracy": 0.9, "certified_accuracy": {"0.3": 0.8, "1": 0.5, "1.58": 0.25}}')
    (tmp_path / "wong.autoattack.json").write_text(
        '{"n_samples": 20, "clean_accuracy": 0.75, "results": [{"attack": "autoattack", "norm": "Linf", '
        '"eps": 0.03137254901960784, "robust_accuracy": 0.4}]}')
    rows = {line.split(" | ")[0].lstrip("| "): line for line in reproduce.gpu_section(tmp_path) if "|" in line}
    assert rows["gloro"].endswith("| 2 of 500 | 10 | 90.0 % | certified at L2 1.58 | 62.8 % | 25.0 % |")
    assert rows["wong"].endswith("| 0 of 15 | 20 | 75.0 % | AutoAttack (standard) | 43.2 % | 40.0 % |")
    assert rows["glorc"].endswith("| 0 of 40 | — | — | certified at L2 36/255 | 58.0 % | — |")  # not run
    assert reproduce.gpu_section(tmp_path / "absent") == []
