"""The training loop: wires data, model, objective, schedules, optimiser, EMA and checkpoints.

Reproducibility: the model is initialised from ``train.seed``; each epoch's data order and
augmentation come from a generator seeded by ``(seed, epoch)``, so a run resumed from an epoch
checkpoint replays exactly the epochs an uninterrupted run would have done.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import checkpoint, data, models
from ..certify import eps_key, evaluation_summary, format_results, write_radii
from ..certify.radii import model_norm, radius_problem
from ..config import Config, differences, dump
from ..losses import accuracy
from ..nn import current_p, kernels, relaxed_p, set_p
from ..runlock import RunLock, RunLockedError
from .distributed import DistEnv, average_gradients, barrier, evaluate_sharded, gather_objects, init_distributed, local_device, mean_across, shard, shutdown
from .ema import EMA, recalibrate
from .objectives import StepContext, build_objective
from .optim import apply_lp_weight_decay, build_optimizer
from .rng import rng_state, set_rng_state
from .schedules import build_schedule, build_schedules

LAST = "last.pt"
FINAL = "model.pt"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` = CUDA when available, else CPU; a clear error when CUDA is asked for but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but no CUDA device is available; use --device cpu")
    return dev


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that fixes epoch ``epoch``'s data order and augmentation."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def build_model(cfg: Config, info: data.DatasetInfo) -> nn.Module:
    """The configured model; dataset facts (shape, classes, normalisation) fill unset arguments."""
    kwargs = {k: v for k, v in cfg.model.items() if k != "name"}
    accepted = models.factory_params(cfg.model["name"])
    # your own data: per-channel std of its training split (the built-in datasets keep the authors'
    # scalar std, data/registry.py)
    std = list(info.std_per_channel) if info.custom else info.std
    defaults = {"in_shape": list(info.in_shape), "num_classes": info.num_classes, "mean": list(info.mean), "std": std}
    for key, value in defaults.items():
        if key not in kwargs and (accepted is None or key in accepted):
            kwargs[key] = value
    return models.build(cfg.model["name"], **kwargs)


class Trainer:
    """One training run in ``out_dir``: ``Trainer(cfg, out_dir).fit()``."""

    def __init__(
        self,
        cfg: Config,
        out_dir: str | Path,
        device: str = "auto",
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        device_ = resolve_device(device)
        self.env: DistEnv = init_distributed(device_)
        self.device = local_device(device_, self.env)
        self.progress = progress and self.env.is_main
        self.log = log if self.env.is_main else (lambda s: None)
        self.epoch = 0  # epochs completed
        self.step = 0
        self.train_seconds = 0.0
        self._setup()

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed % 2**32)
        options = data.config_options(dataclasses.asdict(cfg.data))
        if options or data.custom.is_custom(cfg.data.name):
            self._own_data(options)
            options = data.config_options(dataclasses.asdict(cfg.data))
        else:
            self.info = data.info(cfg.data.name)
        x, y = data.load(cfg.data.name, "train", data_dir=cfg.data.data_dir, **options)
        held = None
        if cfg.data.train_fraction < 1:  # Fazlyab23's authors: train on 90 % of the training split
            keep, rest = data.holdout_split(len(y), cfg.data.train_fraction)
            held, x, y = (x[rest], y[rest]), x[keep], y[keep]
        if cfg.data.val_fraction:  # tuning: evaluate on a held-out part of the train split, never on test
            train_idx, val_idx = data.validation_split(y, cfg.data.val_fraction, cfg.data.val_seed)
            self.x_test, self.y_test = x[val_idx], y[val_idx]
            x, y = x[train_idx], y[train_idx]
            self.eval_split = "val"
        elif cfg.eval.split == "heldout":
            self.x_test, self.y_test = held  # type: ignore[misc]  # config check: train_fraction < 1
            self.eval_split = "heldout"
        else:
            self.x_test, self.y_test = data.load(cfg.data.name, cfg.eval.split, data_dir=cfg.data.data_dir, **options)
            self.eval_split = cfg.eval.split
        self.x_train, self.y_train = x.to(self.device), y.to(self.device)
        strength = data.augment_strength(cfg.data.augment)  # EMAReport Table 7: waug / maug / saug
        padding = cfg.data.padding
        if padding is None:
            padding = 0 if strength.get("resized_crop") else self.info.default_padding
        hflip = self.info.default_hflip if cfg.data.hflip is None else cfg.data.hflip
        self.augmenter = data.Augmenter(padding=padding, hflip=hflip, degrees=cfg.data.affine_degrees,
                                        translate=cfg.data.affine_translate, fill=cfg.data.affine_fill,
                                        pad_mode=cfg.data.pad_mode, **strength)
        if cfg.train.batch_size > len(self.y_train):
            raise ValueError(f"train.batch_size={cfg.train.batch_size} exceeds the {len(self.y_train)} training samples; "
                             f"pass --set train.batch_size=N with N <= {len(self.y_train)}")
        self.iters_per_epoch = len(self.y_train) // cfg.train.batch_size  # last partial batch dropped

        self.model = build_model(cfg, self.info).to(self.device)
        for eps in cfg.eval.eps:  # a warning, not an error: the run may be meant (e.g. a sanity check)
            problem = radius_problem(eps, model_norm(self.model), self.x_test)
            if problem:
                self.log(f"warning: eval.eps {eps:g}: {problem}")
        self.ddp_model: nn.Module = self.model
        if self.env.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.objective = build_objective(cfg.objective).to(self.device)
        groups = [
            {"params": [p for p in self.model.parameters() if p.requires_grad], "lr_factor": 1.0},
            {"params": [p for p in self.objective.parameters() if p.requires_grad], "lr_factor": self.objective.lr_factor},
        ]
        self.optimizer = build_optimizer(groups, cfg.optim)
        self.schedules = build_schedules(cfg.train.schedule)
        lr_spec = dict(cfg.optim.lr_schedule)
        if lr_spec.get("kind") == "cosine":
            lr_spec.setdefault("total", cfg.train.epochs)
        self.lr_schedule = build_schedule(lr_spec)
        self.ema = EMA(self.model, cfg.train.ema_decay, cfg.train.ema_warmup) if cfg.train.ema_decay else None

    def _own_data(self, options: dict[str, Any]) -> None:
        """Your own data: measure it, and record its path and class numbering in the config (saved
        in every checkpoint, so certify reads and numbers it the same way)."""
        d = self.cfg.data
        kind, path = data.custom.split_spec(d.name, d.data_dir)
        self.info = data.info(kind, path, **options)
        d.name, d.data_dir, d.classes = kind, path, list(self.info.classes)
        self.log(f"data: {self.info.description}")

    # ------------------------------------------------------------ state I/O
    def state_dict(self) -> dict[str, Any]:
        return {
            **checkpoint.model_payload(self.model),
            "kind": "train_state",
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "optimizer": self.optimizer.state_dict(),
            "objective": self.objective.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        diff = differences(state["config"], self.cfg.to_dict())
        if diff:
            raise ValueError(
                "the checkpoint was written by a run with a different config; refusing to resume.\n  "
                + "\n  ".join(diff)
                + "\nStart a new run (another --out) or resume with the same preset and overrides."
            )
        self.model.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        set_rng_state(state.get("rng") or {})

    def save(self) -> None:
        if self.env.is_main:
            checkpoint.save_atomic(self.state_dict(), self.out / LAST)

    # -------------------------------------------------------------- training
    def scheduled_values(self, t: float) -> dict[str, float]:
        return {name: float(s(t)) for name, s in self.schedules.items()}

    def _apply_values(self, values: dict[str, float], t: float) -> None:
        if "p" in values:
            set_p(self.model, values["p"])
        scale = self.lr_schedule(t)
        for g in self.optimizer.param_groups:
            g["lr"] = self.cfg.optim.lr * g["lr_factor"] * scale

    def train_epoch(self, bar: tqdm | None) -> dict[str, float]:
        cfg = self.cfg
        gen = epoch_generator(cfg.train.seed, self.epoch)
        n = len(self.y_train)
        perm = torch.randperm(n, generator=gen)
        aug = self.augmenter.sample(n, gen)
        self.model.train()
        totals = {"loss": 0.0, "acc": 0.0}
        start = time.perf_counter()
        for it in range(self.iters_per_epoch):
            t = self.epoch + it / self.iters_per_epoch
            values = self.scheduled_values(t)
            self._apply_values(values, t)
            idx = shard(perm[it * cfg.train.batch_size : (it + 1) * cfg.train.batch_size], self.env)
            xb = self.augmenter.apply(self.x_train[idx.to(self.device)], aug.index(idx))
            yb = self.y_train[idx.to(self.device)]
            out = self.objective(self.ddp_model, xb, yb, StepContext(values, idx.to(self.device), t, {"num_samples": n}))
            if not torch.isfinite(out.loss):
                raise FloatingPointError(
                    f"loss became {out.loss.item()} at epoch {self.epoch} iteration {it}; lower optim.lr or check the data"
                )
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            average_gradients(list(self.objective.parameters()), self.env)
            if cfg.optim.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            if cfg.optim.lp_weight_decay:
                apply_lp_weight_decay(self.model, self.optimizer.param_groups[0]["lr"], cfg.optim.lp_weight_decay)
            self.optimizer.step()
            self.objective.after_step(self.model)
            if self.ema is not None:
                if "p" in values:
                    set_p(self.ema.model, values["p"])
                self.ema.update(self.model)
            self.step += 1
            loss, acc = out.loss.item(), accuracy(out.logits.detach(), yb)
            totals["loss"] += loss
            totals["acc"] += acc
            if bar is not None:
                post = {"loss": f"{loss:.4f}", "acc": f"{acc:.3f}"}
                post.update({k: f"{v:.4g}" for k, v in values.items()})
                bar.set_description(f"epoch {self.epoch + 1}/{cfg.train.epochs}", refresh=False)
                bar.set_postfix(post, refresh=False)
                bar.update(1)
        self.train_seconds += time.perf_counter() - start
        k = max(self.iters_per_epoch, 1)
        means = mean_across({"loss": totals["loss"] / k, "train_acc": totals["acc"] / k}, self.env)
        return {**means, **values, **out.metrics}

    def eval_model(self) -> nn.Module:
        """The model every evaluation uses: the EMA weights when EMA is on."""
        return self.ema.model if self.ema is not None else self.model

    def evaluation_model(self) -> nn.Module:
        """:meth:`eval_model`, or with ``train.ema_recalibrate`` a copy of the EMA model at p = inf whose
        mean-shift running means are recomputed on the training data (train/ema.py)."""
        if self.ema is None or not self.cfg.train.ema_recalibrate:
            return self.eval_model()
        model = copy.deepcopy(self.ema.model)
        if current_p(model) is not None:
            set_p(model, math.inf)
        return recalibrate(model, self.x_train, self.cfg.train.batch_size)

    @torch.no_grad()
    def quick_eval(self) -> dict[str, Any]:
        """Clean and certified test accuracy for the per-epoch log: at p = inf for l_p-relaxed models;
        LSE-relaxed models are 1-Lipschitz at every p and are certified as they are (EMAReport Eq. 6)."""
        model = self.evaluation_model()
        p = current_p(model)
        was_training = model.training
        if p is not None and relaxed_p(model) is not None:
            set_p(model, math.inf)
        model.eval()
        try:
            n = self.cfg.train.eval_max or len(self.y_test)
            # per-epoch numbers use the kind's cheapest sound certificate; the final evaluation the best
            cert = evaluate_sharded(model, self.x_test[:n], self.y_test[:n], [], None, self.cfg.eval.batch_size, self.env,
                                    {"method": "fast"}).cert
            out = {"test_clean": cert.clean_accuracy()}
            out.update({f"test_cert@{eps_key(e)}": cert.certified_accuracy(e) for e in self.cfg.eval.eps})
            return out
        finally:
            if p is not None:
                set_p(model, p)
            model.train(was_training)

    def fit(self, resume: bool = False, verify: bool = True) -> dict[str, Any]:
        """Train (or resume) to ``train.epochs``, then certify the test split (the validation part with
        ``data.val_fraction``); returns results.json.

        The run directory is locked for the whole call (:class:`lipcert.runlock.RunLock`, taken by
        the main process only; every process learns whether it got it, so none waits for a partner
        that gave up). ``verify`` checks the content hash of the checkpoint a resume reads.
        """
        lock, refusal = None, None
        if self.env.is_main:
            try:
                lock = RunLock(self.out, note=self.log).acquire()
            except RunLockedError as err:
                refusal = str(err)
        refusal = gather_objects(refusal, self.env)[0]
        if refusal is not None:
            raise RunLockedError(refusal)
        try:
            return self._fit(resume, verify)
        finally:
            if lock is not None:
                lock.release()

    def _prepare_kernels(self) -> None:
        """Load (on first use on this machine: build, ~5-10 s) the l_p-distance kernels before the
        clock starts, so ``train_seconds`` never counts the one-time build, and say which backend runs."""
        if current_p(self.model) is None:
            return
        probe = torch.empty(0, device=self.device)
        info = kernels.backend_info(probe)
        built = kernels.native.build_seconds() if self.device.type == "cpu" else None
        if built is not None:
            info += f" (built in {built:.1f} s, once per machine and source: cached in {kernels.native.cache_dir()})"
        self.log(info)

    def _fit(self, resume: bool, verify: bool) -> dict[str, Any]:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            if not (self.out / LAST).exists():
                raise FileNotFoundError(f"--resume: no {LAST} in {self.out}; start without --resume")
            self.load_state_dict(checkpoint.read(self.out / LAST, map_location=self.device, verify=verify))
            self.log(f"resumed from {self.out / LAST} after epoch {self.epoch}")
        elif (self.out / LAST).exists():
            raise FileExistsError(f"{self.out} already holds a run ({LAST}); pass --resume to continue it or choose another --out")
        if self.env.is_main:
            (self.out / "config.yaml").write_text(dump(cfg))
        self._prepare_kernels()
        total = cfg.train.epochs * self.iters_per_epoch
        # in a log file (stderr not a terminal) one bar line every 30 s instead of several a second
        quiet_log = not getattr(sys.stderr, "isatty", lambda: False)()
        bar = tqdm(total=total, initial=self.epoch * self.iters_per_epoch, disable=not self.progress, dynamic_ncols=True,
                   leave=True, mininterval=30.0 if quiet_log else 0.1)
        try:
            while self.epoch < cfg.train.epochs:
                t0 = time.perf_counter()
                metrics = self.train_epoch(bar)
                self.epoch += 1
                record = {"epoch": self.epoch, "step": self.step, **metrics, "lr": self.optimizer.param_groups[0]["lr"]}
                if cfg.train.eval_every and (self.epoch % cfg.train.eval_every == 0 or self.epoch == cfg.train.epochs):
                    record.update(self.quick_eval())
                record["epoch_seconds"] = time.perf_counter() - t0
                self.save()
                line = json.dumps(_jsonable(record))
                if self.env.is_main:
                    with open(self.out / "metrics.jsonl", "a") as f:
                        f.write(line + "\n")
                (bar.write if self.progress else self.log)(line)
        finally:
            bar.close()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Freeze p = inf, save ``model.pt``, certify + attack the test split, write results."""
        cfg = self.cfg
        model = self.evaluation_model()
        if current_p(model) is not None:
            set_p(model, math.inf)
        model.eval()
        if self.env.is_main:
            checkpoint.save_atomic(checkpoint.model_payload(model, kind="model", config=cfg.to_dict()), self.out / FINAL)
        eps = list(cfg.eval.eps)
        cert_kwargs = {"method": cfg.eval.method} if cfg.eval.method else None
        ev = evaluate_sharded(model, self.x_test, self.y_test, eps, cfg.eval.attack, cfg.eval.batch_size, self.env, cert_kwargs,
                              progress=lambda line: self.log(f"final evaluation: {line}"))
        results = {"dataset": cfg.data.name, "split": self.eval_split, **evaluation_summary(ev, eps, self.log), "train_seconds": self.train_seconds}
        if self.env.is_main:
            (self.out / "results.json").write_text(json.dumps(_jsonable(results), indent=2) + "\n")
            write_radii(self.out / "radii.csv", ev.cert)
        self.log(format_results(results))
        barrier(self.env)
        return results


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def train(cfg: Config, out_dir: str | Path, device: str = "auto", resume: bool = False, progress: bool = True,
          verify: bool = True) -> dict[str, Any]:
    """Train a run described by ``cfg`` into ``out_dir``; returns the results dict (see :meth:`Trainer.fit`).

    Under torchrun every process calls this; the process group is torn down at the end.
    """
    trainer = Trainer(cfg, out_dir, device=device, progress=progress)
    try:
        return trainer.fit(resume=resume, verify=verify)
    finally:
        shutdown(trainer.env)
