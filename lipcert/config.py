"""Typed run configuration: loaded from a preset YAML, overridden by ``--set key=value``.

A config has six sections. ``model`` and ``objective`` are open dicts (``name`` plus that
factory's keyword arguments, e.g. ``model.width=1024``); the others are dataclasses whose fields
are checked, so a typo in a preset or an override is an error that lists the valid keys.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A preset or override that does not describe a valid run."""


@dataclass
class DataConfig:
    # a dataset name (`lipcert presets` / data.available()) or your own data: imagefolder / arrays
    # with data_dir the folder / file (also written "imagefolder:PATH"; lipcert/data/custom.py)
    name: str = "mnist5k"
    data_dir: str | None = None
    padding: int | None = None  # random-crop padding; None = the dataset's default
    hflip: bool | None = None  # random horizontal flip; None = the dataset's default
    pad_mode: str = "zero"  # random-crop padding: zero | edge (border pixels, the Zhang22 v2 code)
    # your own data only: class names numbered 0..K-1 (None = sorted folder names / 0..max label;
    # training records them so certify numbers the classes the same way), the held-out fraction
    # and its seed when the data has no train/test split of its own
    classes: list[str] | None = None
    test_fraction: float | None = None
    split_seed: int = 0
    # random rotation (degrees, uniform in [-d, d]) + translation (fraction of the side, whole pixels)
    # after the flip, as torchvision's RandomAffine; 0 = off (data/augment.py)
    affine_degrees: float = 0.0
    affine_translate: float = 0.0
    affine_fill: float = 0.0  # raw pixel value outside the image (0.5 = 0 after a [-1, 1] normalisation)
    # EMAReport App. C.3 / Table 7: waug = the crop / flip above; maug adds ColorJitter(0.4, 0.4, 0.4, 0.1)
    # with p 0.8 and RandomGrayscale(0.2); saug = RandomResizedCrop (padding then defaults to 0) + flip
    # + the same colour operations (data/augment.py STRENGTHS)
    augment: str = "waug"
    # train on a fixed random fraction of the training split (Fazlyab23's authors: 0.9); eval.split=heldout
    # evaluates on the rest (data/split.py)
    train_fraction: float = 1.0
    # > 0: hold out this stratified fraction of the TRAIN split and evaluate on it instead of
    # eval.split (results.json says split "val"); for tuning without touching the test split
    val_fraction: float = 0.0
    val_seed: int = 0  # which samples are held out (data/validation.py)


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | madam | sgd
    lr: float = 0.03
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-10
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    # Decoupled l_p weight decay (Zhang et al. 2021 code, "AdamW-l_p"): every step, each row w of an
    # l_p-distance layer moves by -lr * lp_weight_decay * grad(||w||_p^2 / 2) at the layer's current p;
    # other parameters decay as in AdamW. 0 = off.
    lp_weight_decay: float = 0.0
    grad_clip: float | None = None
    # Learning-rate multiplier over training progress (a schedule spec, see train/schedules.py).
    # The default cosine schedule anneals to 0 over train.epochs (Zhang22 §5.1).
    lr_schedule: dict[str, Any] = field(default_factory=lambda: {"kind": "cosine"})


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 512
    seed: int = 0
    # Scheduled values by name (p, lam, eps, ...), each a schedule spec; see train/schedules.py.
    schedule: dict[str, Any] = field(default_factory=dict)
    ema_decay: float | None = None  # e.g. 0.99; None disables EMA
    ema_warmup: bool = True  # decay min(decay, (1 + step) / (10 + step))
    # recompute the evaluated EMA model's mean-shift running means on the training data (train/ema.py)
    ema_recalibrate: bool = False
    eval_every: int = 1  # epochs between test evaluations in the log (0 = only at the end)
    eval_max: int | None = None  # evaluate on at most this many test samples during training


@dataclass
class EvalConfig:
    eps: list[float] = field(default_factory=lambda: [0.1, 0.3])
    split: str = "test"
    batch_size: int = 500
    # the attacks behind the empirical column (lipcert/attacks/suite.py): name pgd | apgd-ce | apgd-dlr | apgd-t |
    # apgd | strong (= pgd, then apgd-ce and apgd-t on the samples pgd left) or a list; PGD settings steps,
    # restarts, step_size; APGD settings apgd_steps, apgd_restarts, apgd_targets. null: no attack
    attack: dict[str, Any] | None = field(default_factory=lambda: {"name": "strong", "steps": 20, "restarts": 1})
    # certificate of the final evaluation: None = the model's own; for l-inf-dist nets also "interval" or
    # "best" (margin and interval bounds, the larger radius per sample; certify/interval.py)
    method: str | None = None


@dataclass
class Config:
    preset: str | None = None
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "linf_mlp"})
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "mixed"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"data": DataConfig, "optim": OptimConfig, "train": TrainConfig, "eval": EvalConfig}
_OPEN = ("model", "objective")

#: Keys that describe where/how a run executes, not what it computes (ignored on resume checks).
RUNTIME_KEYS = {"data.data_dir", "train.eval_every", "train.eval_max", "eval.batch_size"}


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_FRACTION = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)\s*/\s*(\d+\.?\d*|\.\d+)$")


def _fix_numbers(value: Any) -> Any:
    """YAML reads ``inf``, ``1e-10`` and fractions such as ``8/255`` (radii) as strings; normalise
    them to floats (a fraction with a zero denominator stays a string and fails the type check)."""
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("inf", "+inf", ".inf", "infinity"):
            return math.inf
        if _NUMBER.match(low):
            return float(low)
        m = _FRACTION.match(low)
        if m and float(m.group(2)) != 0:
            return float(low.split("/")[0]) / float(m.group(2))
        return value
    if isinstance(value, dict):
        return {k: _fix_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fix_numbers(v) for v in value]
    return value


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a Config from plain data, rejecting unknown sections and keys with a clear message.

    Numbers may be written as fractions (``eval.eps: [2/255, 8/255]``) anywhere but in the
    string-valued keys (e.g. ``data.data_dir``), which are kept as written."""
    raw = copy.deepcopy(raw)
    strings = {(sec, f.name) for sec, cls in _SECTIONS.items() for f in dataclasses.fields(cls)
               if _field_types(cls)[f.name] in (str, str | None)}
    kept = {(sec, key): raw[sec][key] for sec, key in strings if isinstance(raw.get(sec), dict) and key in raw[sec]}
    raw = _fix_numbers(raw)
    for (sec, key), value in kept.items():
        raw[sec][key] = value
    cfg = Config()
    for key, value in raw.items():
        if key in ("preset", "description"):
            setattr(cfg, key, value)
        elif key in _OPEN:
            if not isinstance(value, dict) or "name" not in value:
                raise ConfigError(f"section {key!r} must be a mapping with a 'name', got {value!r}")
            setattr(cfg, key, dict(value))
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"section {key!r} must be a mapping, got {value!r}")
            cls = _SECTIONS[key]
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - names)
            if unknown:
                raise ConfigError(f"unknown key(s) {unknown} in section {key!r}; valid keys: {sorted(names)}")
            checked = {k: _check_type(v, _field_types(cls)[k], f"{key}.{k}") for k, v in value.items()}
            setattr(cfg, key, cls(**{**dataclasses.asdict(cls()), **checked}))
        else:
            raise ConfigError(f"unknown config section {key!r}; valid sections: {sorted([*_SECTIONS, *_OPEN])}")
    _check_ranges(cfg)
    return cfg


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list", dict: "a mapping"}


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """``value`` as the field type ``tp`` (int <- integral float, float <- int, list <- scalar), or a
    ConfigError naming the key: a wrong type used to fail deep inside training with a TypeError."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for a in inner:
            try:
                return _check_type(value, a, key)
            except ConfigError:
                pass
        words = " or ".join(_TYPE_WORDS.get(typing.get_origin(a) or a, str(a)) for a in inner)
        null = " or null" if type(None) in args else ""
        raise ConfigError(f"{key} must be {words}{null}, got {value!r}")
    base = origin or tp
    if base is list:
        items = value if isinstance(value, list) else [value]  # eval.eps=0.1 means [0.1]
        return [_check_type(v, args[0], key) for v in items] if args else items
    ok = False
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, base)
    if not ok:
        raise ConfigError(f"{key} must be {_TYPE_WORDS.get(base, str(base))}, got {value!r}")
    return value


def _check_ranges(cfg: Config) -> None:
    """Values of the right type that still cannot describe a run."""
    checks = [
        (cfg.train.epochs >= 1, "train.epochs must be >= 1", cfg.train.epochs),
        (cfg.train.batch_size >= 1, "train.batch_size must be >= 1", cfg.train.batch_size),
        (cfg.train.seed >= 0, "train.seed must be >= 0", cfg.train.seed),
        (cfg.train.eval_every >= 0, "train.eval_every must be >= 0 (0 = only at the end)", cfg.train.eval_every),
        (cfg.train.eval_max is None or cfg.train.eval_max >= 1, "train.eval_max must be >= 1 or null", cfg.train.eval_max),
        (cfg.eval.batch_size >= 1, "eval.batch_size must be >= 1", cfg.eval.batch_size),
        (all(e >= 0 for e in cfg.eval.eps), "eval.eps must be radii >= 0", cfg.eval.eps),  # also catches NaN
        (cfg.optim.lr >= 0, "optim.lr must be >= 0", cfg.optim.lr),
        (0 < cfg.data.train_fraction <= 1, "data.train_fraction must be in (0, 1]", cfg.data.train_fraction),
        (cfg.eval.split != "heldout" or cfg.data.train_fraction < 1,
         "eval.split=heldout needs data.train_fraction < 1 (nothing is held out)", cfg.data.train_fraction),
        (0 <= cfg.data.affine_degrees <= 180, "data.affine_degrees must be in [0, 180]", cfg.data.affine_degrees),
        (0 <= cfg.data.affine_translate < 1, "data.affine_translate must be in [0, 1)", cfg.data.affine_translate),
        (cfg.data.augment in ("waug", "maug", "saug"), "data.augment must be waug, maug or saug", cfg.data.augment),
        (cfg.data.augment != "saug" or not cfg.data.padding,
         "data.augment=saug crops with RandomResizedCrop: data.padding must be unset or 0", cfg.data.padding),
        (0 <= cfg.data.val_fraction < 1, "data.val_fraction must be in [0, 1) (0 = no validation split)", cfg.data.val_fraction),
        (cfg.data.val_seed >= 0, "data.val_seed must be >= 0", cfg.data.val_seed),
    ]
    for ok, message, value in checks:
        if not ok:
            raise ConfigError(f"{message}, got {value!r}")
    if cfg.eval.attack is not None:
        from .attacks import attack_names

        try:
            attack_names(cfg.eval.attack)
        except ValueError as err:
            raise ConfigError(f"eval.attack: {err}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=5"`` -> (["train", "epochs"], 5); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, value = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"override key {key!r} must be section.key (e.g. train.epochs=5)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse value of override {text!r}: {err}") from None
    return path, _fix_numbers(parsed)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key[.sub]=value`` overrides and re-validate."""
    raw = cfg.to_dict()
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            if part not in node or not isinstance(node[part], dict):
                if node is raw:
                    raise ConfigError(f"unknown config section {part!r} in override {text!r}")
                node[part] = {} if part not in node or node[part] is None else node[part]
            node = node[part]
        node[path[-1]] = value
    return from_dict(raw)


def preset_names() -> list[str]:
    """Names of the presets shipped in ``lipcert/presets``."""
    return sorted(p.name[:-5] for p in resources.files("lipcert.presets").iterdir() if p.name.endswith(".yaml"))


def load_preset(name_or_path: str) -> Config:
    """A shipped preset by name, or a YAML file by path.

    A preset may start from another one with ``base: NAME`` (a shipped preset, or a YAML path
    relative to the file): its sections are merged key by key into the base's (nested mappings
    too, e.g. ``train.schedule.p``); a mapping that sets a different ``name`` (``model``,
    ``objective``, ``optim``, ``data``, an ensemble's ``member``) or ``kind`` (a schedule)
    replaces the base's instead.
    """
    raw = _read_preset(name_or_path, seen=())
    raw.pop("base", None)
    return from_dict(raw)


def _read_preset(name_or_path: str, seen: tuple[str, ...], relative_to: Path | None = None) -> dict[str, Any]:
    """The raw mapping of a preset with its ``base`` chain resolved."""
    path = Path(name_or_path)
    if relative_to is not None and not path.is_absolute() and path.suffix in (".yaml", ".yml"):
        path = relative_to / path
    where = f" (the base of preset {seen[-1]!r})" if seen else ""
    if path.suffix in (".yaml", ".yml") and path.exists():
        text, name, here = path.read_text(), path.stem, path.parent
    elif path.suffix in (".yaml", ".yml"):
        raise ConfigError(f"preset file {path} does not exist{where}")
    else:
        res = resources.files("lipcert.presets") / f"{name_or_path}.yaml"
        if not res.is_file():
            close = difflib.get_close_matches(name_or_path, preset_names(), n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ConfigError(f"unknown preset {name_or_path!r}{where}; {hint}available: {', '.join(preset_names())}")
        text, name, here = res.read_text(), name_or_path, None
    if name in seen:
        raise ConfigError(f"preset {name!r} is its own base (chain: {' -> '.join([*seen, name])})")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"preset {name!r} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"preset {name!r} must be a YAML mapping of sections, got {type(raw).__name__}")
    raw["preset"] = name
    base = raw.get("base")
    if base is None:
        return raw
    return _merge(_read_preset(str(base), (*seen, name), here), raw)


def _same_kind(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return all(new.get(k, old.get(k)) == old.get(k) for k in ("name", "kind"))


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``, mapping by mapping; a mapping that names another ``name`` (e.g. a
    model or an ensemble member of another architecture) or ``kind`` (a schedule of another
    form) replaces the base's instead."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict) and _same_kind(old, value):
            out[key] = _merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def field_defaults() -> dict[str, Any]:
    """Flattened scalar defaults of the typed sections (data, optim, train, eval): what a key meant
    in a config written before the key existed (a new option's default keeps the old behaviour)."""
    out: dict[str, Any] = {}
    for section, cls in (("data", DataConfig), ("optim", OptimConfig), ("train", TrainConfig), ("eval", EvalConfig)):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f"{section}.{f.name}"] = f.default
    return out


def differences(a: dict[str, Any], b: dict[str, Any], ignore: set[str] = RUNTIME_KEYS) -> list[str]:
    """Human-readable list of keys whose values differ between two config dicts (a key an older
    config lacks counts with its field default)."""
    base = field_defaults()
    fa, fb = {**base, **flatten(a)}, {**base, **flatten(b)}
    keys = sorted((set(fa) | set(fb)) - ignore)
    return [f"{k}: {fa.get(k, '<unset>')!r} != {fb.get(k, '<unset>')!r}" for k in keys if fa.get(k, "<unset>") != fb.get(k, "<unset>")]


def dump(cfg: Config) -> str:
    """YAML text of the resolved config (saved beside every run)."""
    return yaml.safe_dump(_yaml_safe(cfg.to_dict()), sort_keys=False, allow_unicode=True)


def _yaml_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _yaml_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_safe(v) for v in value]
    return value
