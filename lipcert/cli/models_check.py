"""Checks on models loaded by the CLI before they are certified."""

from __future__ import annotations


def relaxed_model_check(model, path: str, p_inf: bool) -> None:
    """A training state saved in the l_p phase (finite p) is not Lipschitz as evaluated: refuse it
    with a CLI hint, or with ``--p-inf`` certify it at p = inf as training's per-epoch evaluations do."""
    import math

    from ..nn import relaxed_p, set_p

    p = relaxed_p(model)
    if p is None:
        return
    if not p_inf:
        raise ValueError(f"{path} holds the model at p = {p:g} (a training state in the l_p phase), where it is not "
                         "1-Lipschitz and cannot be certified. Certify the finished run's model.pt, or pass --p-inf to "
                         "certify this state at p = inf (as training's per-epoch evaluations do)")
    set_p(model, math.inf)


def add_integrity_option(p) -> None:
    """``--ignore-corruption``: load checkpoints whose content hash does not match (with a warning)."""
    p.add_argument("--ignore-corruption", "--no-verify", dest="ignore_corruption", action="store_true",
                   help="load checkpoints even when their content hash does not match their tensors (a corrupted "
                        "file); a warning is printed instead of the error")
