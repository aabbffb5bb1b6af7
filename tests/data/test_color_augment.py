"""EMAReport's MAUG / SAUG operations (lipcert/data/color.py, resized_crop.py, Augmenter options)
against one-image-at-a-time references written from torchvision's documented formulas."""

import colorsys
import math

import pytest
import torch
import torch.nn.functional as F

from lipcert.data import AugParams, Augmenter, augment_strength
from lipcert.data import color
from lipcert.data import resized_crop as rrc


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n=6, c=3, h=5, w=7, seed=0):
    x = torch.rand(n, c, h, w, generator=gen(seed), dtype=torch.float64)
    x[0] = 0.5  # a gray image (hue undefined, saturation 0)
    x[1, :, 0, 0] = torch.tensor([0.9, 0.9, 0.1]) if c == 3 else 0.9  # ties of the largest channel
    return x


# ---- per-image references ---------------------------------------------------------------------

def ref_gray(img):  # (C, H, W) -> (H, W)
    return img[0] if img.shape[0] == 1 else 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]


def ref_brightness(img, f):
    return (f * img).clamp(0, 1)


def ref_contrast(img, f):
    m = float(ref_gray(img).mean())
    return (f * img + (1 - f) * m).clamp(0, 1)


def ref_saturation(img, f):
    if img.shape[0] == 1:
        return img
    return (f * img + (1 - f) * ref_gray(img).unsqueeze(0)).clamp(0, 1)


def ref_hue(img, f):
    if img.shape[0] == 1:
        return img
    out = torch.empty_like(img)
    for i in range(img.shape[1]):
        for j in range(img.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*img[:, i, j].tolist())
            out[:, i, j] = torch.tensor(colorsys.hsv_to_rgb((h + f) % 1.0, s, v), dtype=img.dtype)
    return out


REF_OPS = (ref_brightness, ref_contrast, ref_saturation, ref_hue)


def ref_boxes(u, h, w, scale, ratio):
    """torchvision's RandomResizedCrop.get_params, one image, fed the given uniforms."""
    u = u.tolist()
    area = h * w
    for k in range(rrc.TRIES):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[k])
        lr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[rrc.TRIES + k]
        aspect = math.exp(lr)
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return [int(u[-2] * (h - ch + 1)), int(u[-1] * (w - cw + 1)), ch, cw]
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return [(h - ch) // 2, (w - cw) // 2, ch, cw]


# ---- single operations ------------------------------------------------------------------------

@pytest.mark.parametrize("c", [1, 3])
def test_grayscale_weights(c):
    x = images(c=c)
    g = color.grayscale(x)
    assert g.shape == (6, 1, 5, 7)
    for i in range(6):
        torch.testing.assert_close(g[i, 0], ref_gray(x[i]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("op", [0, 1, 2, 3])
def test_each_colour_op_matches_the_per_image_formula(op, c):
    x = images(c=c, seed=1 + op)
    lo, hi = (-0.5, 0.5) if op == 3 else (0.0, 2.0)
    f = lo + (hi - lo) * torch.rand(6, generator=gen(10 + op), dtype=torch.float64)
    f[2] = 0.0 if op == 3 else 1.0  # the identity factor
    out = color._FUNCS[op](x, f)
    assert out.shape == x.shape and out.dtype == x.dtype
    for i in range(6):
        torch.testing.assert_close(out[i], REF_OPS[op](x[i], float(f[i])), rtol=0, atol=1e-9)
    torch.testing.assert_close(out[2], x[2], rtol=0, atol=1e-12)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_hsv_round_trip_and_colorsys():
    x = images(n=20, h=4, w=4, seed=5)
    hsv = color.rgb_to_hsv(x)
    for i in range(3):
        for a in range(4):
            for b in range(4):
                expect = colorsys.rgb_to_hsv(*x[i, :, a, b].tolist())
                torch.testing.assert_close(hsv[i, :, a, b], torch.tensor(expect, dtype=x.dtype), rtol=0, atol=1e-12)
    torch.testing.assert_close(color.hsv_to_rgb(hsv), x, rtol=0, atol=1e-12)


def test_hue_shift_by_a_full_turn_or_a_third_permutes_channels():
    x = images(seed=6)
    torch.testing.assert_close(color.hue(x, torch.ones(6, dtype=x.dtype)), x, rtol=0, atol=1e-12)
    # +1/3 of the circle maps red -> green -> blue: (r, g, b) -> (b, r, g)
    torch.testing.assert_close(color.hue(x, torch.full((6,), 1 / 3, dtype=x.dtype)), x[:, [2, 0, 1]], rtol=0, atol=1e-9)


def test_color_jitter_applies_each_rows_order_and_skips_rows_off():
    x = images(n=12, seed=7)
    g = gen(8)
    factors = torch.stack([0.6 + 0.8 * torch.rand(12, generator=g, dtype=torch.float64) for _ in range(3)]
                          + [0.2 * torch.rand(12, generator=g, dtype=torch.float64) - 0.1], 1)
    order = torch.rand(12, 4, generator=g).argsort(1)
    on = torch.rand(12, generator=g) < 0.7
    on[0], on[1] = True, False
    out = color.color_jitter(x, factors, order, on)
    for i in range(12):
        expect = x[i]
        if on[i]:
            for op in order[i].tolist():
                expect = REF_OPS[op](expect, float(factors[i, op]))
        torch.testing.assert_close(out[i], expect, rtol=0, atol=1e-9)
    # the order matters (so it is really applied per row): brightness then contrast != contrast then brightness
    f = torch.tensor([[1.4, 0.6, 1.0, 0.0]], dtype=x.dtype)
    bc = color.color_jitter(x[2:3], f, torch.tensor([[0, 1, 2, 3]]), torch.tensor([True]))
    cb = color.color_jitter(x[2:3], f, torch.tensor([[1, 0, 2, 3]]), torch.tensor([True]))
    assert not torch.allclose(bc, cb)


def test_random_grayscale_keeps_channels():
    x = images(seed=9)
    rows = torch.tensor([True, False, True, False, False, True])
    out = color.random_grayscale(x, rows)
    for i in range(6):
        expect = ref_gray(x[i]).expand(3, -1, -1) if rows[i] else x[i]
        torch.testing.assert_close(out[i], expect, rtol=0, atol=1e-12)
    one = images(c=1)
    assert torch.equal(color.random_grayscale(one, rows), one)


# ---- random resized crop ----------------------------------------------------------------------

@pytest.mark.parametrize("h, w, scale, ratio", [(32, 32, (0.08, 1.0), (3 / 4, 4 / 3)), (5, 9, (0.08, 1.0), (3 / 4, 4 / 3)),
                                                 (9, 4, (0.3, 0.6), (0.5, 2.0)), (6, 6, (0.99, 1.0), (3.0, 4.0))])
def test_boxes_follow_torchvision_get_params(h, w, scale, ratio):
    u = torch.rand(400, rrc.NUM_UNIFORMS, generator=gen(11), dtype=torch.float64)
    got = rrc.boxes(u, h, w, scale, ratio)
    for i in range(400):
        assert got[i].tolist() == ref_boxes(u[i], h, w, scale, ratio), i
    top, left, bh, bw = got.unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (bh >= 1) & (bw >= 1) & (top + bh <= h) & (left + bw <= w)).all())


def test_boxes_fall_back_to_the_central_crop():
    # ratio 3..4 never fits a 6 x 6 image at ~full area: every image gets the central fallback (h = 6 / 3 = 2)
    u = torch.rand(50, rrc.NUM_UNIFORMS, generator=gen(12), dtype=torch.float64)
    got = rrc.boxes(u, 6, 6, (0.99, 1.0), (3.0, 4.0))
    assert got.tolist() == [[2, 0, 2, 6]] * 50


@pytest.mark.parametrize("c, h, w", [(3, 32, 32), (1, 28, 28), (3, 5, 9)])
def test_resized_crop_matches_interpolate_of_the_crop(c, h, w):
    x = torch.rand(40, c, h, w, generator=gen(13))
    box = rrc.boxes(torch.rand(40, rrc.NUM_UNIFORMS, generator=gen(14), dtype=torch.float64), h, w)
    box[0] = torch.tensor([0, 0, h, w])  # the whole image: the identity
    out = rrc.resized_crop(x, box)
    assert out.shape == x.shape and out.dtype == x.dtype
    for i in range(40):
        t, l_, bh, bw = box[i].tolist()
        expect = F.interpolate(x[i:i + 1, :, t:t + bh, l_:l_ + bw].double(), size=(h, w), mode="bilinear",
                               align_corners=False)[0].float()
        torch.testing.assert_close(out[i], expect, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=1e-7)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_resized_crop_refuses_boxes_outside():
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="inside"):
        rrc.resized_crop(x, torch.tensor([[0, 0, 4, 4], [1, 0, 4, 4]]))


# ---- the Augmenter options --------------------------------------------------------------------

STRENGTH_SETTINGS = [
    ("maug", {"padding": 4, "hflip": True}),
    ("saug", {"padding": 0, "hflip": True}),
    ("maug", {"padding": 1, "hflip": False}),
]


@pytest.mark.parametrize("name, base", STRENGTH_SETTINGS)
@pytest.mark.parametrize("c", [1, 3])
def test_strengths_deterministic_by_seed_and_in_range(name, base, c):
    x = torch.rand(64, c, 8, 8, generator=gen(15))
    x[:4] = torch.tensor([0.0, 1.0, 0.5, 0.999]).view(4, 1, 1, 1)  # extreme images
    aug = Augmenter(**base, **augment_strength(name))
    a, b, other = aug(x, gen(16)), aug(x, gen(16)), aug(x, gen(17))
    assert torch.equal(a, b) and not torch.equal(a, other)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0 and float(a.max()) <= 1


@pytest.mark.parametrize("name, base", STRENGTH_SETTINGS)
def test_strength_matches_its_steps_one_image_at_a_time(name, base):
    """The batched pipeline = per image: resized crop, crop / flip, jitter in its order, grayscale."""
    x = torch.rand(24, 3, 6, 6, generator=gen(18), dtype=torch.float64)
    aug = Augmenter(**base, **augment_strength(name))
    params = aug.sample(24, gen(19))
    out = aug.apply(x, params)
    pad = base["padding"]
    for i in range(24):
        img = x[i]
        if params.crop_u is not None:
            t, l_, bh, bw = ref_boxes(params.crop_u[i], 6, 6, aug.rrc_scale, aug.rrc_ratio)
            img = F.interpolate(img[None, :, t:t + bh, l_:l_ + bw], size=(6, 6), mode="bilinear", align_corners=False)[0]
        oy, ox = (params.shifts[i] + pad).tolist()
        img = F.pad(img, (pad,) * 4)[:, oy:oy + 6, ox:ox + 6]
        if params.flips[i]:
            img = img.flip(-1)
        if params.jitter_on[i]:
            for op in params.jitter_order[i].tolist():
                img = REF_OPS[op](img, float(params.jitter[i, op]))
        if params.gray[i]:
            img = ref_gray(img).expand(3, -1, -1)
        torch.testing.assert_close(out[i], img, rtol=0, atol=1e-9)


def test_strength_parameter_distribution():
    p = Augmenter(0, True, **augment_strength("saug")).sample(20000, gen(20))
    assert abs(p.jitter_on.double().mean().item() - 0.8) < 0.015
    assert abs(p.gray.double().mean().item() - 0.2) < 0.015
    for k in range(3):
        assert 0.6 <= float(p.jitter[:, k].min()) and float(p.jitter[:, k].max()) <= 1.4
    assert -0.1 <= float(p.jitter[:, 3].min()) and float(p.jitter[:, 3].max()) <= 0.1
    assert all(sorted(row) == [0, 1, 2, 3] for row in p.jitter_order[:200].tolist())
    # every one of the 24 orders occurs (uniform permutations)
    assert len({tuple(r) for r in p.jitter_order.tolist()}) == 24
    box = rrc.boxes(p.crop_u, 32, 32)
    frac = (box[:, 2] * box[:, 3]).double() / 1024
    assert 0.05 < float(frac.min()) and float(frac.max()) <= 1.0


def test_strengths_leave_the_other_parameters_and_generator_use_unchanged():
    after, base = [], None
    for kw in [{}, augment_strength("maug"), augment_strength("saug")]:
        g = gen(21)
        params = Augmenter(0 if kw.get("resized_crop") else 3, True, **kw).sample(100, g)
        after.append(torch.rand(3, generator=g))
        base = params if base is None else base
        assert torch.equal(params.flips, base.flips)
    assert all(torch.equal(after[0], a) for a in after)
    waug = Augmenter(3, True).sample(100, gen(21))
    assert waug.jitter is None and waug.gray is None and waug.crop_u is None


def test_params_indexing_keeps_the_new_fields():
    p = Augmenter(0, True, **augment_strength("saug")).sample(10, gen(22))
    idx = [3, 1, 7]
    q = p[idx]
    for field in ("shifts", "flips", "crop_u", "jitter", "jitter_order", "jitter_on", "gray"):
        assert torch.equal(getattr(q, field), getattr(p, field)[idx]), field
    assert q.rrc_scale == p.rrc_scale and len(p[2]) == 1


def test_waug_is_unchanged_by_the_new_options():
    """Default options give exactly the crop / flip of before (same parameters, same images)."""
    x = torch.rand(30, 3, 8, 8, generator=gen(23))
    plain = Augmenter(2, True)
    params = plain.sample(30, gen(24))
    assert torch.equal(plain.apply(x, params), plain.apply(x, AugParams(params.shifts, params.flips, params.angles, params.moves)))


def test_bad_strength_settings():
    with pytest.raises(ValueError, match="padding 0"):
        Augmenter(4, True, **augment_strength("saug"))
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_strength("xaug")
    with pytest.raises(ValueError, match="jitter"):
        Augmenter(jitter=(0.4, 0.4, 0.4, 0.6))
    with pytest.raises(ValueError, match="grayscale_p"):
        Augmenter(grayscale_p=1.5)
    with pytest.raises(TypeError, match="floating"):
        color.color_jitter(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), torch.ones(1, 4), torch.arange(4)[None], torch.tensor([True]))
    p = Augmenter(**augment_strength("maug")).sample(3, gen(25))
    with pytest.raises(ValueError, match="come together"):
        AugParams(p.shifts, p.flips, jitter=p.jitter)



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name, base", STRENGTH_SETTINGS[:2])
def test_strengths_on_cuda_match_cpu(name, base):
    """The same (CPU-drawn) parameters give the same images on the GPU, up to float rounding."""
    x = torch.rand(256, 3, 32, 32, generator=gen(27))
    aug = Augmenter(**base, **augment_strength(name))
    params = aug.sample(256, gen(28))
    out = aug.apply(x.cuda(), params)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), aug.apply(x, params), rtol=0, atol=1e-5)
    assert aug.sample(8, torch.Generator(device="cuda").manual_seed(1)).jitter.device.type == "cuda"
