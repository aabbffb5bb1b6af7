"""Run reports: a markdown summary and plots people would rather look at than read.

``certified_vs_radius.png`` is the certified-accuracy-vs-radius curve from ``radii.csv`` (the
fraction of test samples whose certified radius exceeds r, for every r), with the attacked
accuracy (worst case over the evaluation's attacks) at each evaluated eps as markers;
``training_curves.png`` shows loss, accuracies and the scheduled values per epoch from
``metrics.jsonl``.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .runlock import RunInProgressWarning, describe, running


def read_radii(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, prediction, radius) arrays from a radii CSV."""
    labels, preds, radii = [], [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            labels.append(int(row["label"]))
            preds.append(int(row["prediction"]))
            radii.append(float(row["radius"]))
    return np.array(labels), np.array(preds), np.array(radii)


def certified_curve(radii: np.ndarray, num: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Radii grid r and certified accuracy ``mean(radius > r)`` on it."""
    top = float(radii.max()) if radii.size and radii.max() > 0 else 1.0
    grid = np.linspace(0.0, top * 1.05, num)
    acc = (radii[None, :] > grid[:, None]).mean(axis=1) if radii.size else np.zeros_like(grid)
    return grid, acc


def _plot_radius(run: Path, results: dict[str, Any], radii: np.ndarray) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid, acc = certified_curve(radii)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(grid, acc, label="certified")
    for key, entry in results.get("eps", {}).items():
        attacked = entry.get("attack_accuracy", entry.get("pgd_accuracy"))  # results.json before APGD: PGD only
        if attacked is not None:
            ax.plot([float(key)], [attacked], "rx")
    ax.plot([], [], "rx", label="attacked (upper bound)")
    ax.set_xlabel(f"radius ({results.get('norm', 'linf')}, raw input units)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.01)
    ax.set_title(f"{results.get('dataset', '')} {results.get('split', '')}: certified accuracy vs radius")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run / "certified_vs_radius.png"
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _plot_training(run: Path, records: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r["loss"] for r in records])
    axes[0].set_title("training loss")
    for key in sorted({k for r in records for k in r if k in ("train_acc", "test_clean") or k.startswith("test_cert@")}):
        axes[1].plot([r["epoch"] for r in records if key in r], [r[key] for r in records if key in r], label=key)
    axes[1].set_title("accuracy")
    axes[1].legend(fontsize=7)
    scheduled = [k for k in ("p", "lam", "eps", "lr") if any(k in r for r in records)]
    for key in scheduled:
        vals = [r.get(key) for r in records]
        vals = [float("nan") if v in (None, "inf") else float(v) for v in vals]
        axes[2].plot(epochs, vals, label=key)
    axes[2].set_yscale("log")
    axes[2].set_title("scheduled values (p = inf not drawn)")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run / "training_curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def make_report(run_dir: str | Path, lipschitz_samples: int = 0, lipschitz_p: list[float] | None = None,
                verify: bool = True) -> Path:
    """Write ``report.md`` and the plots into ``run_dir``; returns the markdown path.

    ``lipschitz_samples`` > 0 adds the empirical Lipschitz constant of the final model at the p
    values ``lipschitz_p`` (default: the run's first p and inf; :mod:`lipcert.analysis.lipschitz`);
    ``verify`` checks the checkpoint's content hash (:mod:`lipcert.checkpoint`). A run that a
    ``lipcert train`` still holds (:mod:`lipcert.runlock`) gets a warning, in the report and as a
    :class:`lipcert.runlock.RunInProgressWarning`.
    """
    run = Path(run_dir)
    res_path = run / "results.json"
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist (give the --out of `lipcert train`)")
    if not res_path.is_file():
        holder = running(run)
        if holder is not None:
            raise FileNotFoundError(f"{run} has no results.json yet: its training is still in progress ({describe(holder)}); "
                                    "report it when it has finished")
        raise FileNotFoundError(f"{run} has no results.json; train the run to the end (or run `lipcert certify CKPT "
                                f"--eps ... --json {res_path} --radii {run / 'radii.csv'}`) first")
    results = json.loads(res_path.read_text())
    lines = [f"# lipcert report: {run.name}", ""]
    holder = running(run)
    if holder is not None:
        note = f"this run is still in progress ({describe(holder)}); the files may change while this report is written"
        warnings.warn(f"{run}: {note}", RunInProgressWarning, stacklevel=2)
        lines += [f"> **Warning:** {note}.", ""]
    lines += [
        f"- dataset: **{results.get('dataset')}** ({results.get('split')}, n = {results.get('n')})",
        f"- certificate: {results.get('method')} in {results.get('norm')}; bound: {results.get('bound_meaning', results.get('bound'))}",
        f"- clean accuracy: **{results['clean_accuracy']:.4f}**",
    ]
    if "train_seconds" in results:
        secs = results["train_seconds"]
        lines.append(f"- training time: {secs / 60:.1f} min" if secs >= 60 else f"- training time: {secs:.1f} s")
    lines += ["", "| eps | certified | attacked | PGD alone |", "|---:|---:|---:|---:|"]

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    for key, entry in results.get("eps", {}).items():
        attacked = entry.get("attack_accuracy", entry.get("pgd_accuracy"))
        lines.append(f"| {key} | {entry['certified_accuracy']:.4f} | {cell(attacked)} | {cell(entry.get('pgd_accuracy'))} |")
    if results.get("attack"):
        lines.append(f"\nattacked: robust to every attack of {results['attack']} (an upper bound on robust accuracy).")
    if (run / "radii.csv").is_file():
        labels, preds, radii = read_radii(run / "radii.csv")
        plot = _plot_radius(run, results, radii)
        correct = radii[preds == labels]
        lines += ["", f"![certified accuracy vs radius]({plot.name})", ""]
        if correct.size:
            lines.append(
                f"Radius of correctly classified samples: median {np.median(correct):.4g}, "
                f"90th percentile {np.percentile(correct, 90):.4g}, max {correct.max():.4g}."
            )
    if (run / "metrics.jsonl").is_file():
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        if records:
            plot = _plot_training(run, records)
            lines += ["", f"![training curves]({plot.name})"]
    if lipschitz_samples > 0:
        from .analysis.lipschitz import lipschitz_section

        lines += lipschitz_section(run, lipschitz_samples, lipschitz_p, verify=verify)
    out = run / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out
