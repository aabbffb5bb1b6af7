"""Certificates of the tight l2 models (``TIGHT_L2_BANK``): sound, and so close to exact that an
inflated radius is caught.

The contract tests attack every certified sample at 0.999 x its radius. On a trained model whose
certificates are loose, a bug that inflates a radius (doubling Huang21's local radius, say) can
survive that attack. On these models the exact bounds are the distance to the decision boundary,
so this test asserts both sides for every bound in an entry's ``tight`` list: no flip at 0.999 x
the radius, and flips on at least ``TIGHT_SHARE`` of the certified samples at ``TIGHT_FACTOR`` x.
A radius inflated by more than ``TIGHT_FACTOR`` therefore fails the first assertion.
"""

from __future__ import annotations

import functools

import pytest

from lipcert import certify

from ..soundness.attack import broken_strong
from .bank import TIGHT_FACTOR, TIGHT_L2_BANK, TIGHT_SHARE

CASES = [(name, bound) for name, case in TIGHT_L2_BANK.items() for bound in case.tight]


@functools.lru_cache(maxsize=None)
def _made(name: str):
    return TIGHT_L2_BANK[name].make()


@pytest.mark.parametrize("name,bound", CASES, ids=[f"{n}-{b}" for n, b in CASES])
def test_tight_certificate_is_sound_and_nearly_exact(name, bound):
    model, x, y = _made(name)
    cert = certify.certify(model, x, y, bound=bound, **TIGHT_L2_BANK[name].certify_kwargs)
    pos = cert.radius > 0
    assert int(pos.sum()) >= x.shape[0] // 2, f"{name}/{bound}: only {int(pos.sum())} of {x.shape[0]} certified"
    r = cert.radius[pos].float()
    inside = broken_strong(model, x[pos], y[pos], r * 0.999, norm="l2", steps=30, restarts=2)
    assert not inside.any(), (f"{name}/{bound} ({cert.method}): {int(inside.sum())} of {int(pos.sum())} certified samples "
                              f"broken at 0.999 x their radius")
    beyond = broken_strong(model, x[pos], y[pos], r * TIGHT_FACTOR, norm="l2", steps=30, restarts=2)
    assert float(beyond.float().mean()) >= TIGHT_SHARE, (
        f"{name}/{bound}: the attack at {TIGHT_FACTOR} x the radius flips only {int(beyond.sum())} of {int(pos.sum())}: "
        "the certificate is not tight here, so this entry would not catch an inflated radius")


def test_the_tight_models_make_the_local_bound_matter():
    """On ``dead_rows`` the global bound is loose and ``best`` rests on Huang21's local bound, so
    the local radius is what the test above checks there."""
    from lipcert.certify.result import SOURCE_CODES

    model, x, y = _made("dead_rows")
    kw = TIGHT_L2_BANK["dead_rows"].certify_kwargs
    best = certify.certify(model, x, y, bound="best", **kw)
    glob = certify.certify(model, x, y, bound="global", **kw)
    assert (best.radius > 3 * glob.radius).all()
    assert (best.extra["bound_source"] == SOURCE_CODES["local-upper"]).float().mean() >= 0.5
