"""l2 Lipschitz certificates: never broken by PGD at the certified radius, labelled, sound in floating point."""

from __future__ import annotations

import math

import pytest
import torch

from lipcert import certify
from lipcert.attacks import pgd
from lipcert.certify import CertificationError, evaluate
from lipcert.certify.l2 import BOUND_SOURCES
from tests.bounds.nets import ball_points, l2_blobs, tiny_mcnf, train_l2_briefly
from tests.conftest import tiny_linf_net
from tests.bounds.nets import single_thread  # noqa: F401  (autouse: one intra-op thread)

EPS = [0.05, 0.2]


@pytest.fixture(scope="module")
def trained():
    x, y = l2_blobs(120, seed=0)
    model = train_l2_briefly(tiny_mcnf("relu_theta", seed=2), x, y, steps=30, eps=0.3)
    xt, yt = l2_blobs(60, seed=7)
    return model, xt, yt


@pytest.fixture(scope="module")
def random_net():
    model = tiny_mcnf("clipped_maxmin", seed=1)
    x, _ = l2_blobs(60, seed=8)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample correct: all can get a radius
    return model, x, y


def _attack_at_radius(model, x, y, radii):
    """PGD (3 restarts) at each sample's own certified radius, in a few buckets."""
    ok = radii > 0
    xs, ys, rs = x[ok], y[ok], radii[ok]
    broken = 0
    for q in (0.1, 0.6):
        r = float(torch.quantile(rs, q))
        sel = rs >= r
        att = pgd(model, xs[sel], ys[sel], eps=r, norm="l2", steps=25, restarts=2, step_size=r / 6)
        broken += int((~att.robust).sum())
    return broken, int(ok.sum())


@pytest.mark.parametrize("bound", ["global", "local-upper", "best", "local"])
@pytest.mark.parametrize("which", ["random", "trained"])
def test_pgd_at_certified_radius_never_flips(bound, which, trained, random_net):
    model, x, y = trained if which == "trained" else random_net
    cert = certify.certify(model, x, y, bound=bound, eps=EPS, local_iters=300)
    assert cert.norm == "l2"
    broken, n = _attack_at_radius(model, x, y, cert.radius.float())
    assert n >= 5, "too few certified samples for the test to mean anything"
    assert broken == 0, f"PGD broke {broken} of {n} samples inside their certified {bound} radius"
    for e in EPS:  # and at every eps the certificate claims
        sel = cert.certified(e)
        if sel.any():
            assert pgd(model, x[sel], y[sel], e, norm="l2", steps=25, restarts=2).robust.all()


def test_no_sampled_point_in_the_ball_changes_the_prediction(trained):
    model, x, y = trained
    cert = certify.certify(model, x, y, bound="best", eps=EPS)
    ok = cert.radius > 0
    pts = ball_points(x[ok], 1.0, 64)
    scale = cert.radius[ok].float().view(1, -1, 1, 1, 1)
    pts = x[ok].unsqueeze(0) + (pts - x[ok].unsqueeze(0)) * scale  # points within each sample's radius
    with torch.no_grad():
        preds = torch.stack([model(p).argmax(1) for p in pts])
    assert (preds == y[ok].unsqueeze(0)).all()


def test_radius_formula_labels_and_sources(trained):
    model, x, y = trained
    glob = certify.certify(model, x, y, bound="global", pairs=False)
    correct = glob.prediction == glob.label
    lip = float(glob.extra["lipschitz_global"][0])
    expected = (glob.extra["margin"] / (math.sqrt(2) * lip)).clamp_min(0)  # Huang21: margin / (sqrt(2) L)
    assert (glob.radius <= expected).all() and (glob.radius[~correct] == 0).all()
    torch.testing.assert_close(glob.radius[correct], expected[correct], rtol=2e-2, atol=1e-6)  # slack: float32 inference
    assert (glob.extra["rounding_slack"][correct] < 1e-2 * glob.extra["margin"][correct].abs() + 1e-4).all()
    # GloRo's pairwise form: min_j (z_y - z_j) / (||w_y - w_j|| L_prefix), never smaller
    pairs = certify.certify(model, x, y, bound="global")
    assert (pairs.radius >= glob.radius).all() and (pairs.radius[correct] > glob.radius[correct]).any()
    from lipcert.bounds import L2Bounds

    an = L2Bounds(model)
    with torch.no_grad():
        z = model.double()(x.double())
    model.float()
    w = an.last_weight
    k = (w[y].unsqueeze(1) - w.unsqueeze(0)).norm(dim=2) * an.prefix_upper
    ratio = ((z.gather(1, y[:, None]) - z) / k).masked_fill(torch.nn.functional.one_hot(y, 4).bool(), math.inf).amin(1)
    assert (pairs.radius[correct] <= ratio[correct]).all()
    torch.testing.assert_close(pairs.radius[correct], ratio[correct], rtol=2e-2, atol=1e-6)
    glob = pairs
    assert glob.bound == "upper" and glob.method == "l2_lipschitz_global"
    best = certify.certify(model, x, y, bound="best", eps=EPS)
    est = certify.certify(model, x, y, bound="local", eps=EPS, local_iters=300)
    assert best.bound == "upper" and est.bound == "estimate"
    assert (best.radius >= glob.radius).all()  # best of sound bounds is never worse than global
    assert set(best.extra["bound_source"].unique().tolist()) <= {0, 1, 2, 5}  # 5: LipLT (upper)
    assert set(est.extra["bound_source"].unique().tolist()) <= {0, 1, 3}
    assert BOUND_SOURCES[2] == "local (upper)" and BOUND_SOURCES[3] == "local (estimate)"
    for e in EPS:  # local radii never exceed the ball they were computed on
        loc = best.extra["bound_source"] == 2
        assert (best.radius[loc] <= max(EPS) * (1 + 1e-5) + 1e-9).all()
        assert f"lipschitz_local@{e:.6g}" in best.extra


def test_local_bound_certifies_more_on_locally_trained_net(trained):
    model, x, y = trained
    glob = certify.certify(model, x, y, bound="global", eps=EPS)
    est = certify.certify(model, x, y, bound="local", eps=EPS, local_iters=300)
    loc = est.extra[f"lipschitz_local@{EPS[1]:.6g}"]
    finite = torch.isfinite(loc)
    assert finite.any() and (loc[finite] <= glob.extra["lipschitz_global"][finite] * (1 + 1e-12)).all()
    assert est.certified_accuracy(EPS[1]) >= glob.certified_accuracy(EPS[1])


def test_skips_samples_broken_by_pgd_and_misclassified(random_net):
    model, x, y = random_net
    y_bad = y.clone()
    y_bad[:5] = (y[:5] + 1) % 4
    cert = certify.certify(model, x, y_bad, bound="best", eps=[5.0])
    assert (cert.radius[:5] == 0).all()
    loc = cert.extra["lipschitz_local@5"]
    assert torch.isnan(loc[:5]).all()  # misclassified: no local bound computed
    # eps = 5 is far beyond what such a net withstands: PGD breaks (nearly) all, they are skipped
    assert int(torch.isnan(loc).sum()) >= 50


def test_evaluate_reports_l2_with_bound_labels(trained):
    model, x, y = trained
    results, cert = evaluate(model, x, y, EPS, {"name": "pgd", "steps": 10}, batch_size=32)
    assert results["norm"] == "l2" and results["bound"] == "upper"
    assert "provable" in results["bound_meaning"]
    for e in ("0.05", "0.2"):
        entry = results["eps"][e]
        assert entry["soundness_violations"] == 0
        assert sum(entry["certified_by"].values()) == round(entry["certified_accuracy"] * results["n"])
        assert entry["pgd_accuracy"] >= entry["certified_accuracy"]
    results_g, _ = evaluate(model, x, y, EPS, None, cert_kwargs={"bound": "global"})
    assert results_g["method"] == "l2_lipschitz_global"
    assert results_g["eps"]["0.2"]["certified_accuracy"] <= results["eps"]["0.2"]["certified_accuracy"]


def test_clear_errors(random_net):
    model, x, y = random_net
    with pytest.raises(CertificationError, match="unknown l2 bound"):
        certify.certify(model, x, y, bound="tight")
    with pytest.raises(CertificationError, match="finite"):
        certify.certify(model, x, y, eps=[-1.0])
    with pytest.raises(CertificationError, match="not an l2"):
        certify.lipschitz_l2(tiny_linf_net(), x[:, :, :6, :6], y)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(CertificationError, match="NaN"):
        certify.certify(model, bad, y)
    # the l-inf certifier ignores eps passed through the dispatcher
    net = tiny_linf_net()
    xl = torch.rand(4, 1, 6, 6)
    assert certify.certify(net, xl, net(xl).argmax(1), eps=[0.1]).norm == "linf"


@pytest.fixture(scope="module")
def net_2d():
    """A 2-D, three-class ReLU-theta MLP trained briefly with Local-Lip-G (tight enough to test)."""
    from torch import nn

    from lipcert.models.mcnf import MCNF
    from lipcert.nn.activations import ReLUTheta
    from lipcert.train.objectives import StepContext
    from lipcert.train.objectives_l2 import LipschitzObjective

    torch.manual_seed(3)
    model = MCNF(nn.Linear(2, 16), ReLUTheta(16, 0.8), nn.Linear(16, 16), ReLUTheta(16, 0.8), nn.Linear(16, 3), in_shape=(2,))
    centers = torch.tensor([[0.0, 0.8], [-0.7, -0.4], [0.7, -0.4]])
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    x = centers[y] + 0.25 * torch.randn(300, 2, generator=g)
    obj = LipschitzObjective("gloro", bound="local", power_iters=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for s in range(150):
        out = obj(model, x, y, StepContext({"eps": 0.2 * min(1, s / 75), "lam": min(1, s / 75)}, torch.arange(300), 0.0))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        obj.after_step(model)
    xt = centers[torch.arange(60) % 3] + 0.25 * torch.randn(60, 2, generator=g)
    yt = torch.arange(60) % 3
    model.eval()
    # distance to the nearest label change along 360 rays, in steps of 0.004 (an upper bound of the
    # true distance up to the step and the angular resolution)
    t = torch.linspace(0, 2 * math.pi, 361)[:-1]
    dirs = torch.stack([t.cos(), t.sin()], 1)
    steps = torch.linspace(0, 1.2, 301)
    dist = torch.full((60,), math.inf)
    with torch.no_grad():
        for i in range(60):
            pts = xt[i] + steps[:, None, None] * dirs[None]
            wrong = (model(pts.reshape(-1, 2)).argmax(1).view(len(steps), len(dirs)) != yt[i]).any(1)
            if wrong.any():
                dist[i] = float(steps[wrong.nonzero()[0, 0]])
    return model, xt, yt, dist


@pytest.mark.parametrize("bound", ["global", "best", "local"])
def test_brute_force_distance_to_the_decision_boundary_in_2d(bound, net_2d):
    """Every certified radius must be below the distance to the nearest label change found by the
    ray scan -- and the bounds are tight enough here that a radius inflated by 25 % would not be."""
    model, x, y, dist = net_2d
    cert = certify.certify(model, x, y, bound=bound, eps=[0.1, 0.2], local_iters=500)
    ok = cert.radius > 0
    assert int(ok.sum()) >= 30
    ratios = cert.radius[ok].float() / dist[ok]
    assert float(ratios.max()) <= 1.0, f"a {bound} radius exceeds the distance to the decision boundary"
    assert float(ratios.max()) > 1 / 1.25  # the check has teeth


def _tied_rows_net():
    """Two classes with identical last-layer rows (K_01 = 0) whose biases differ by 2^-30: the
    float64 margin is positive but below the float32 rounding slack, and float32 inference ties
    (it predicts class 0 at x itself)."""
    from torch import nn

    from lipcert.models.mcnf import MCNF
    from lipcert.nn.activations import ReLU
    from lipcert.nn.common import Flatten

    lin0, lin1 = nn.Linear(2, 2), nn.Linear(2, 3)
    with torch.no_grad():
        lin0.weight.copy_(torch.eye(2))
        lin0.bias.zero_()
        lin1.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        lin1.bias.copy_(torch.tensor([0.0, 2.0**-30, 0.0]))
    return MCNF(Flatten(), lin0, ReLU(), lin1, in_shape=(2,)).eval()


@pytest.mark.parametrize("bound", ["global", "local-upper", "best"])
def test_zero_factor_pair_with_nonpositive_lower_margin_certifies_nothing(bound):
    """Regression: a pair with K_yj = 0 and lower margin <= 0 gave 0 / 0 = nan, which was read as
    +inf (the j = y convention), so the other pairs alone set a radius of 0.707."""
    model = _tied_rows_net()
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([1])
    assert int(model(x).argmax(1)) == 0  # float32 inference already disagrees at x
    cert = certify.certify(model, x, y, bound=bound, eps=[0.3])
    assert float(cert.radius[0]) == 0.0


def test_layers_without_activation_in_between():
    """Huang21's chain bounds refuse Linear, Linear with a clear error; ``best`` falls back to LipLT,
    whose radius is below the distance to a class change along the margin's gradient."""
    from torch import nn

    from lipcert.models.mcnf import MCNF
    from lipcert.nn.activations import ReLU
    from lipcert.nn.common import Flatten

    torch.manual_seed(0)
    model = MCNF(Flatten(), nn.Linear(4, 6), ReLU(), nn.Linear(6, 6), nn.Linear(6, 3), in_shape=(4,)).eval()
    x = torch.randn(20, 4)
    y = model(x).argmax(1)
    with pytest.raises(CertificationError, match="without an activation"):
        certify.certify(model, x, y, bound="global")
    cert = certify.certify(model, x, y, bound="best", eps=[0.1])
    assert bool((cert.radius > 0).all())
    m64 = model.double()
    x64 = x.double().requires_grad_(True)
    z = m64(x64)
    runner = z.scatter(1, y[:, None], -math.inf).argmax(1)
    (g,) = torch.autograd.grad((z.gather(1, y[:, None]) - z.gather(1, runner[:, None])).sum(), x64)
    d = -g / g.norm(dim=1, keepdim=True)
    ts = torch.linspace(0, 1, 401, dtype=torch.float64)[1:]
    flips = 0
    for i in range(x.shape[0]):
        t = ts * 4 * float(cert.radius[i])
        pred = m64(x64[i].detach() + t[:, None] * d[i]).argmax(1)
        changed = (pred != y[i]).nonzero()
        if len(changed):
            flips += 1
            assert float(cert.radius[i]) <= float(t[changed[0, 0]]), i
    assert flips >= 5  # the line search does reach the boundary
