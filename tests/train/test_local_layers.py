"""``local_layers``: the local bound on chosen layers only (Huang21 code, TinyImageNet ``--indices``),
and the memory estimate of the per-sample vectors (lipcert.train.memory)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lipcert.bounds import LipschitzChain
from lipcert.config import apply_overrides, load_preset
from lipcert.models.mcnf import build_mcnf
from lipcert.train import Trainer
from lipcert.train.memory import activation_bytes_per_sample, estimate_memory, vector_bytes_per_sample
from lipcert.train.objectives import StepContext
from lipcert.train.objectives_l2 import LipschitzObjective
from tests.bounds.nets import l2_blobs, tiny_mcnf
from tests.bounds.nets import single_thread  # noqa: F401  (autouse: one intra-op thread)

TINY_PRESETS = ["tinyimagenet-l2-local-8c2f", "tinyimagenet-l2-local-8c2f-maxmin"]


def _run(obj, model, x, y, idx, steps=2, eps=0.1, seed=0):
    """``steps`` calls of ``obj`` (the vectors move between calls); loss, gradients, stored vectors."""
    torch.manual_seed(seed)
    for _ in range(steps):
        model.zero_grad()
        out = obj(model, x, y, StepContext({"eps": eps, "lam": 0.7}, idx, 0.0))
        out.loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    return out.loss.detach(), grads, {k: v.clone() for k, v in obj.local_store.state_dict().items()}


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("act", ["relu_theta", "clipped_maxmin"])
def test_every_layer_listed_is_the_default_exactly(fast, act):
    model = tiny_mcnf(act, theta=0.5).train()
    x, y = l2_blobs(12)
    idx = torch.arange(12) * 3
    depth = LipschitzChain.from_model(model).depth
    kw = dict(bound="local", power_iters=2, sparsity=0.01, lam_theta=0.1, fast=fast)
    ref = _run(LipschitzObjective("bcp", **kw), model, x, y, idx)
    new = _run(LipschitzObjective("bcp", local_layers=list(range(depth))[::-1], **kw), model, x, y, idx)
    assert torch.equal(ref[0], new[0])  # same process, same operations: identical bits
    assert all(torch.equal(a, b) for a, b in zip(ref[1], new[1]))
    assert ref[2].keys() == new[2].keys() and len(ref[2]) == depth
    assert all(torch.equal(ref[2][k], new[2][k]) for k in ref[2])


def _exact_norm(mat: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(mat.double(), ord=2)


def _reference_lmt_loss(model, x, y, eps, layers):
    """LMT at lambda 1 written out (Huang21 Eq. 6, 25): CE of ``z + sqrt(2) eps L_i`` on the other
    classes, ``L_i`` the product over layers of the exact norm of the reduced matrix (listed layers)
    or of the whole matrix (the others), from dense matrices and SVD."""
    chain = LipschitzChain.from_model(model)
    ops = chain.ops()
    mats = [op.dense().detach() for op in ops]
    glob = torch.stack([_exact_norm(m) for m in mats])
    with torch.no_grad():
        fwd = chain.forward(x)
        prop = chain.propagate(x, eps, fwd, sigmas=glob.float(), ball=True)
        masks = chain.masks(prop.bounds)
    lip = torch.ones(x.shape[0], dtype=torch.float64)
    for l, m in enumerate(mats):
        if l not in layers:
            lip = lip * glob[l]
            continue
        col = masks[l - 1][1].reshape(x.shape[0], -1).double() if l > 0 else torch.ones(x.shape[0], m.shape[1], dtype=torch.float64)
        row = masks[l][0].reshape(x.shape[0], -1).double() if l < len(masks) else torch.ones(x.shape[0], m.shape[0], dtype=torch.float64)
        lip = lip * torch.stack([_exact_norm(row[i, :, None] * m * col[i, None, :]) for i in range(x.shape[0])])
    z = fwd.logits.detach().double()
    worst = z + math.sqrt(2) * eps * lip[:, None] * (F.one_hot(y, z.shape[1]) == 0)
    return F.cross_entropy(worst, y)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("layers", [[0, 2, 4], [1, 6], [5]])
def test_a_subset_is_local_where_listed_and_global_elsewhere(fast, layers):
    model = tiny_mcnf("relu_theta", theta=0.3).train()
    x, y = l2_blobs(10)
    idx = torch.arange(10) + 100
    eps = 0.08
    obj = LipschitzObjective("lmt", bound="local", power_iters=300, local_layers=layers, fast=fast)
    torch.manual_seed(0)
    obj(model, x, y, StepContext({"eps": eps, "lam": 1.0}, idx, 0.0))  # vectors converge
    out = obj(model, x, y, StepContext({"eps": eps, "lam": 1.0}, idx, 0.0))
    ref = _reference_lmt_loss(model, x, y, eps, layers)
    assert float(out.loss.detach()) == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
    assert set(obj.local_store.keys()) == {f"l{l}" for l in layers}  # vectors only for the listed layers
    # and the subset is really used: with every layer local the loss is smaller (tighter bound)
    full = LipschitzObjective("lmt", bound="local", power_iters=300, fast=fast)
    full(model, x, y, StepContext({"eps": eps, "lam": 1.0}, idx, 0.0))
    assert float(full(model, x, y, StepContext({"eps": eps, "lam": 1.0}, idx, 0.0)).loss.detach()) < float(out.loss.detach()) - 1e-6


def test_local_layers_errors():
    model = tiny_mcnf("relu").train()
    x, y = l2_blobs(4)
    ctx = StepContext({"eps": 0.1, "lam": 1.0}, torch.arange(4), 0.0)
    with pytest.raises(ValueError, match="outside the chain"):
        LipschitzObjective("bcp", bound="local", local_layers=[0, 7])(model, x, y, ctx)
    with pytest.raises(ValueError, match="needs bound: local"):
        LipschitzObjective("bcp", bound="global", local_layers=[0])
    with pytest.raises(ValueError, match="distinct"):
        LipschitzObjective("bcp", bound="local", local_layers=[1, 1])
    with pytest.raises(ValueError, match="empty"):
        LipschitzObjective("bcp", bound="local", local_layers=[])
    with pytest.raises(ValueError, match="list of layer indices"):
        LipschitzObjective("bcp", bound="local", local_layers="0,3")


@pytest.mark.parametrize("layers", [None, [0, 2, 4]])
def test_the_estimate_is_the_store_after_an_epoch(tmp_path, layers):
    over = ["train.epochs=1", "train.batch_size=64"] + ([f"objective.local_layers={layers}"] if layers else [])
    cfg = apply_overrides(load_preset("digits-l2-local"), over)
    trainer = Trainer(cfg, tmp_path, device="cpu", progress=False, log=lambda s: None)
    trainer.train_epoch(None)
    store = trainer.objective.local_store
    n = len(trainer.y_train)
    per = vector_bytes_per_sample(trainer.model, cfg.objective)
    assert store.nbytes() == n * per > 0  # sized once for the whole training split, never grown
    depth = LipschitzChain.from_model(trainer.model).depth
    assert set(store.keys()) == {f"l{l}" for l in (layers or range(depth))}


def test_vector_bytes_follow_the_layer_shapes():
    model = tiny_mcnf("relu")  # 1x8x8 -> C4 (4x8x8) -> C4/2 (4x4x4) -> C8 (8x4x4) -> C8/2 (8x2x2) -> F64 -> F64 -> F4
    ops = LipschitzChain.from_model(model).ops()
    sizes = [min(op.in_numel, op.out_numel) for op in ops]
    assert sizes == [64, 64, 64, 32, 32, 64, 4]  # the smaller side of each layer
    spec = {"name": "local_lip", "loss": "bcp"}
    assert vector_bytes_per_sample(model, spec) == 2 * sum(sizes)
    assert vector_bytes_per_sample(model, {**spec, "local_layers": [0, 3], "store_dtype": "float32"}) == 4 * (64 + 32)
    assert vector_bytes_per_sample(model, {"name": "bcp"}) == 0  # global bound: no per-sample vectors
    assert vector_bytes_per_sample(model, {**spec, "keep_vectors": False}) == 0


def test_the_activation_estimate_covers_what_a_step_keeps_for_backward():
    """Bytes saved for the backward pass grow per sample by well under the estimate (8C2F at 1/16
    width on TinyImageNet-sized inputs, local bound on the presets' layers)."""
    torch.manual_seed(0)
    for act in ("relu_theta", "clipped_maxmin"):
        model = build_mcnf("8c2f", (3, 64, 64), 200, act, 1.0, 1 / 16, mean=[0.5], std=0.25).train()
        saved = []
        for batch in (2, 4):
            seen: dict[int, int] = {}

            def pack(t):
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
                return t

            obj = LipschitzObjective("bcp", bound="local", power_iters=3, sparsity=0.01, local_layers=[0, 3, 6, 7, 8])
            x, y = torch.rand(batch, 3, 64, 64), torch.randint(0, 200, (batch,))
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                obj(model, x, y, StepContext({"eps": 0.16, "lam": 1.0}, torch.arange(batch), 0.0))
            saved.append(sum(seen.values()))
        per_sample = (saved[1] - saved[0]) / 2
        # saved tensors: ~10.5 (ReLU-theta) / 12.5 (clipped MaxMin) pre-activation copies; the backward pass
        # adds transients (peak 14.6 / 19.1 copies measured at full width, lipcert/train/memory.py): the
        # estimate's 24 copies must leave at least 40 % of itself for them
        assert 0 < per_sample <= 0.6 * activation_bytes_per_sample(model)


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_tinyimagenet_presets_fit_one_80gb_gpu(name):
    cfg = load_preset(name)
    est = estimate_memory(cfg)
    assert est.samples == 100_000 and est.batch_size == 128
    assert est.vector_per_sample == 2 * (12288 + 61504 + 25088 + 9216 + 256)  # as the description states
    assert est.vectors_on_device and est.device <= 80e9
    assert f"{est.vectors / 1e9:.1f} GB" in cfg.description and f"{est.activations / 1e9:.1f} GB" in cfg.description
    # every layer local (before issue 12): 116 GB of vectors alone
    full = estimate_memory(apply_overrides(cfg, ["objective.local_layers=null"]))
    assert full.vectors > 80e9


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_tinyimagenet_local_layers_are_the_authors_indices(name):
    """The code's ``--indices 0,6,12,14,17`` are module indices of its nn.Sequential 8C2F
    (Conv, act, Conv, act, ..., Flatten at 16, Linear at 17, act, Linear): the 1st, 4th, 7th and 8th
    convolutions and the first Linear, i.e. chain layers 0, 3, 6, 7, 8."""
    cfg = load_preset(name)
    assert cfg.objective["local_layers"] == [0, 3, 6, 7, 8]
    from lipcert import data
    from lipcert.train.loop import build_model

    ops = LipschitzChain.from_model(build_model(cfg, data.info("tinyimagenet"))).ops()
    shapes = [(op.in_shape, op.out_shape) for op in (ops[l] for l in cfg.objective["local_layers"])]
    assert shapes == [
        ((3, 64, 64), (64, 64, 64)),  # Conv2d(3, 64, 3, padding 1): module 0
        ((64, 31, 31), (128, 31, 31)),  # Conv2d(64, 128, 3, padding 1): module 6
        ((128, 14, 14), (256, 14, 14)),  # Conv2d(128, 256, 3, padding 1): module 12
        ((256, 14, 14), (256, 6, 6)),  # Conv2d(256, 256, 4, stride 2): module 14
        ((256, 6, 6), (256,)),  # Flatten (module 16) + Linear(9216, 256): module 17
    ]

