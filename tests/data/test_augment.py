"""lipcert/data/augment.py: batched crop + flip against a one-sample-at-a-time reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lipcert.data import AugParams, Augmenter


def reference(x: torch.Tensor, params: AugParams, padding: int, edge: bool = False) -> torch.Tensor:
    """Zero-pad (``edge``: repeat the border pixels, numpy's ``np.pad(mode="edge")`` as torchvision's
    ``padding_mode='edge'``), slice the crop at offset padding + shift, flip: one sample at a time."""
    out = []
    h, w = x.shape[-2:]
    for i in range(x.shape[0]):
        if edge:
            padded = torch.from_numpy(np.pad(x[i].numpy(), ((0, 0), (padding, padding), (padding, padding)), mode="edge"))
        else:
            padded = F.pad(x[i], (padding, padding, padding, padding))
        oy, ox = (params.shifts[i] + padding).tolist()
        crop = padded[:, oy:oy + h, ox:ox + w]
        out.append(crop.flip(-1) if params.flips[i] else crop)
    return torch.stack(out)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("padding, hflip", [(1, False), (3, True), (4, True), (7, True)])
def test_matches_reference(padding, hflip):
    x = torch.rand(64, 3, 5, 7, generator=gen(0))  # non-square: catches swapped axes
    aug = Augmenter(padding, hflip)
    params = aug.sample(64, gen(1))
    assert bool((params.shifts.abs() <= padding).all())
    out = aug.apply(x, params)
    assert torch.equal(out, reference(x, params, padding))
    assert out.shape == x.shape and out.dtype == x.dtype


@pytest.mark.parametrize("padding, hflip", [(1, False), (3, True), (7, True)])
def test_edge_padding_matches_reference(padding, hflip):
    x = torch.rand(64, 3, 5, 7, generator=gen(0))
    aug = Augmenter(padding, hflip, pad_mode="edge")
    params = aug.sample(64, gen(1))
    out = aug.apply(x, params)
    assert torch.equal(out, reference(x, params, padding, edge=True))
    assert not torch.equal(out, reference(x, params, padding))  # some crops reach the border
    # by hand: shift right by 2 repeats the first column
    one = torch.arange(12.0).view(1, 1, 3, 4)
    moved = Augmenter(2, pad_mode="edge").apply(one, AugParams(torch.tensor([[0, -2]]), torch.tensor([False])))
    assert moved[0, 0].tolist() == [[0, 0, 0, 1], [4, 4, 4, 5], [8, 8, 8, 9]]
    with pytest.raises(ValueError, match="pad_mode"):
        Augmenter(1, pad_mode="reflect")


def test_shift_semantics_by_hand():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    out = Augmenter(2).apply(x, AugParams(torch.tensor([[1, -2]]), torch.tensor([False])))
    # out[i, j] = x[i + 1, j - 2], zero outside
    expected = torch.tensor([[0, 0, 4, 5], [0, 0, 8, 9], [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(out[0, 0], expected)


def test_flip_only():
    x = torch.rand(32, 2, 4, 6, generator=gen(2))
    aug = Augmenter(0, True)
    params = aug.sample(32, gen(3))
    out = aug.apply(x, params)
    f = params.flips
    assert 0 < int(f.sum()) < 32
    assert torch.equal(out[f], x[f].flip(-1)) and torch.equal(out[~f], x[~f])


def test_identity():
    x = torch.rand(16, 3, 8, 8, generator=gen(4))
    aug = Augmenter(0, False)
    params = aug.sample(16, gen(5))
    assert aug.is_identity and not params.flips.any() and not params.shifts.any()
    assert torch.equal(aug.apply(x, params), x)


def test_deterministic_given_generator():
    x = torch.rand(50, 1, 6, 6, generator=gen(6))
    aug = Augmenter(2, True)
    a, b, c = aug.sample(50, gen(7)), aug.sample(50, gen(7)), aug.sample(50, gen(8))
    assert torch.equal(a.shifts, b.shifts) and torch.equal(a.flips, b.flips)
    assert not torch.equal(a.shifts, c.shifts)
    assert torch.equal(aug.apply(x, a), aug.apply(x, b))


def test_same_generator_consumption_for_any_setting():
    """The loop may share its generator: drawing params must advance it identically for any settings."""
    after = []
    for padding, hflip in [(0, False), (1, False), (3, True)]:
        g = gen(9)
        Augmenter(padding, hflip).sample(100, g)
        after.append(torch.rand(3, generator=g))
    assert all(torch.equal(after[0], a) for a in after)


def test_distribution():
    params = Augmenter(3, True).sample(20000, gen(10))
    counts = torch.bincount((params.shifts + 3).flatten(), minlength=7).double() / 40000
    assert torch.allclose(counts, torch.full((7,), 1 / 7, dtype=torch.float64), atol=0.01)
    assert abs(params.flips.double().mean().item() - 0.5) < 0.02


@pytest.mark.parametrize("world", [1, 2, 4])
def test_rank_slices_equal_full_batch(world):
    """torchrun: params drawn for the global batch, each rank applies its rows = one process."""
    x = torch.rand(48, 3, 8, 8, generator=gen(11))
    aug = Augmenter(3, True)
    params = aug.sample(48, gen(12))
    full = aug.apply(x, params)
    per = 48 // world
    parts = [aug.apply(x[r * per:(r + 1) * per], params.index(slice(r * per, (r + 1) * per))) for r in range(world)]
    assert torch.equal(torch.cat(parts), full)
    # strided rank assignment (DistributedSampler style) and index tensors
    idx = torch.arange(1, 48, world)
    assert torch.equal(aug.apply(x[idx], params[idx]), full[idx])


def test_params_indexing():
    p = Augmenter(2, True).sample(10, gen(13))
    assert len(p) == 10 and len(p[2:5]) == 3 and len(p[[0, 9]]) == 2 and len(p[3]) == 1
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 4]] = True
    assert torch.equal(p[mask].shifts, p.shifts[[1, 4]]) and torch.equal(p[-1].flips, p.flips[9:])
    assert p.to("cpu").shifts.device.type == "cpu"
    assert torch.equal(p[np.int64(4)].shifts, p.shifts[4:5])
    empty = Augmenter(2, True).sample(0, gen(0))
    assert Augmenter(2, True).apply(torch.rand(0, 3, 4, 4), empty).shape == (0, 3, 4, 4)


def test_other_dtypes_and_channels_last():
    x = torch.randint(0, 255, (8, 3, 5, 5), dtype=torch.uint8, generator=gen(14))
    aug = Augmenter(1, True)
    p = aug.sample(8, gen(15))
    assert torch.equal(aug.apply(x, p), reference(x, p, 1))
    xf = torch.rand(8, 3, 5, 5, dtype=torch.float64, generator=gen(16)).to(memory_format=torch.channels_last)
    assert torch.equal(aug.apply(xf, p), reference(xf, p, 1))


def test_bad_inputs():
    aug = Augmenter(1, True)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        aug.apply(torch.rand(3, 5, 5), aug.sample(3, gen(0)))
    with pytest.raises(ValueError, match="2 augmentation parameter rows for a batch of 3"):
        aug.apply(torch.rand(3, 1, 5, 5), aug.sample(2, gen(0)))
    with pytest.raises(ValueError, match="non-negative integer"):
        Augmenter(-1)
    with pytest.raises(ValueError, match="int64 of shape"):
        AugParams(torch.zeros(3, 2), torch.zeros(3, dtype=torch.bool))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.rand(256, 3, 32, 32, generator=gen(17))
    aug = Augmenter(3, True)
    p_cpu = aug.sample(256, gen(18))
    g = torch.Generator(device="cuda").manual_seed(18)
    p_cuda = aug.sample(256, g)
    assert p_cuda.shifts.device.type == "cuda"
    out = aug.apply(x.cuda(), p_cpu)  # CPU params are moved to the data's device
    assert out.device.type == "cuda" and torch.equal(out.cpu(), aug.apply(x, p_cpu))
    assert torch.equal(aug.apply(x.cuda(), p_cuda).cpu(), reference(x, p_cuda.to("cpu"), 3))


# ----------------------------------------------------------------------------- random affine
def fixed(n: int, angle: float = 0.0, move: tuple[float, float] = (0.0, 0.0)) -> AugParams:
    return AugParams(torch.zeros(n, 2, dtype=torch.int64), torch.zeros(n, dtype=torch.bool),
                     torch.full((n,), float(angle)), torch.tensor([move] * n, dtype=torch.float32))


def test_affine_identity_at_zero_angle_and_shift():
    x = torch.rand(8, 3, 7, 9, generator=gen(20))
    aug = Augmenter(0, False, degrees=10, translate=0.1, fill=0.5)
    assert not aug.is_identity
    assert torch.equal(aug.apply(x, fixed(8)), x)
    assert torch.equal(Augmenter(0, False, 0, 0).apply(x, Augmenter(0, False, 0, 0).sample(8, gen(21))), x)


@pytest.mark.parametrize("size", [6, 7])
def test_affine_quarter_turns_are_exact_rotations(size):
    x = torch.rand(4, 2, size, size, generator=gen(22))
    aug = Augmenter(degrees=180)
    assert torch.equal(aug.apply(x, fixed(4, 90.0)), torch.rot90(x, 1, dims=(-2, -1)))  # counter-clockwise
    assert torch.equal(aug.apply(x, fixed(4, -90.0)), torch.rot90(x, -1, dims=(-2, -1)))
    assert torch.equal(aug.apply(x, fixed(4, 180.0)), x.flip(-1).flip(-2))


def test_affine_translation_is_a_whole_pixel_shift_with_fill():
    x = torch.arange(20.0).view(1, 1, 4, 5)
    out = Augmenter(translate=0.5, fill=-1.0).apply(x, fixed(1, 0.0, (2 / 5, -1 / 4)))  # 2 right, 1 up
    expected = torch.full((4, 5), -1.0)
    expected[:3, 2:] = x[0, 0, 1:, :3]  # out[i, j] = x[i + 1, j - 2]
    assert torch.equal(out[0, 0], expected)
    # fractions round to whole pixels (0.3 * 5 = 1.5 -> 2, 0.1 * 4 = 0.4 -> 0)
    assert torch.equal(Augmenter(translate=0.5).apply(x, fixed(1, 0.0, (0.3, 0.1))),
                       Augmenter(translate=0.5).apply(x, fixed(1, 0.0, (0.4, 0.0))))


def test_affine_rotation_keeps_the_centre_and_fills_the_corners():
    x = torch.rand(1, 1, 9, 9, generator=gen(23))
    out = Augmenter(degrees=45, fill=0.25).apply(x, fixed(1, 45.0))
    assert out[0, 0, 4, 4] == x[0, 0, 4, 4]
    assert bool((out[0, 0, [0, 0, 8, 8], [0, 8, 0, 8]] == 0.25).all())
    inside = out[0, 0][out[0, 0] != 0.25]  # nearest neighbour: every other value is an input pixel
    assert bool(torch.isin(inside, x.flatten()).all())


def test_affine_deterministic_by_seed_and_in_range():
    x = torch.rand(64, 3, 8, 8, generator=gen(24))
    aug = Augmenter(0, True, degrees=10, translate=0.1, fill=0.5)
    a, b, c = aug.sample(64, gen(25)), aug.sample(64, gen(25)), aug.sample(64, gen(26))
    assert torch.equal(a.angles, b.angles) and torch.equal(a.moves, b.moves) and not torch.equal(a.angles, c.angles)
    assert torch.equal(aug.apply(x, a), aug.apply(x, b)) and not torch.equal(aug.apply(x, a), aug.apply(x, c))
    big = aug.sample(20000, gen(27))
    assert float(big.angles.abs().max()) <= 10 and float(big.angles.abs().max()) > 9.9
    assert float(big.moves.abs().max()) <= 0.1 and abs(float(big.angles.mean())) < 0.2
    # rows, ranks: the affine part indexes like the rest
    assert torch.equal(aug.apply(x[3:9], a[3:9]), aug.apply(x, a)[3:9])


def test_affine_flip_comes_first():
    """torchvision order of the authors: flip, then rotate (a flip does not commute with a rotation)."""
    x = torch.rand(1, 1, 6, 6, generator=gen(28))
    p = AugParams(torch.zeros(1, 2, dtype=torch.int64), torch.tensor([True]), torch.tensor([90.0]), torch.zeros(1, 2))
    assert torch.equal(Augmenter(0, True, degrees=90).apply(x, p), torch.rot90(x.flip(-1), 1, dims=(-2, -1)))


def test_affine_generator_consumption_independent_of_settings():
    after = []
    for kw in [{}, {"degrees": 10.0}, {"translate": 0.1}, {"degrees": 5.0, "translate": 0.2}]:
        g = gen(29)
        Augmenter(1, True, **kw).sample(50, g)
        after.append(torch.rand(3, generator=g))
    assert all(torch.equal(after[0], a) for a in after)


def test_affine_bad_settings():
    with pytest.raises(ValueError, match="degrees"):
        Augmenter(degrees=-1)
    with pytest.raises(ValueError, match="translate"):
        Augmenter(translate=1.0)
    with pytest.raises(ValueError, match="angles"):
        AugParams(torch.zeros(3, 2, dtype=torch.int64), torch.zeros(3, dtype=torch.bool), torch.zeros(2))
