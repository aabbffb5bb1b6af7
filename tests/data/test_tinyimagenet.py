"""lipcert/data/tinyimagenet.py: a tiny tiny-imagenet-200 tree with real JPEGs, written by the tests."""

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from lipcert import data
from lipcert.data import tinyimagenet

pytestmark = pytest.mark.filterwarnings("ignore::lipcert.data.DataWarning")

WNIDS = ["n09999999", "n01443537", "n05555555"]  # deliberately unsorted: labels follow sorted order


def _jpeg(path, rng, gray=False, size=64):
    path.parent.mkdir(parents=True, exist_ok=True)
    if gray:
        img = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L")
    else:
        img = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
    img.save(path, format="JPEG", quality=90)


def _decoded(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1)


def make_tree(root, seed=0):
    """train: 3 images per class (one grayscale); val: 5 images listed in val_annotations.txt."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for w in WNIDS:
        for k in (0, 2, 10):  # natural order 0, 2, 10 (not the lexicographic 0, 10, 2)
            _jpeg(root / "train" / w / "images" / f"{w}_{k}.JPEG", rng, gray=(k == 2))
        (root / "train" / w / f"{w}_boxes.txt").write_text("ignored\n")
    val = [("val_10.JPEG", WNIDS[0]), ("val_2.JPEG", WNIDS[1]), ("val_0.JPEG", WNIDS[0]),
           ("val_1.JPEG", WNIDS[2]), ("val_3.JPEG", WNIDS[1])]
    for f, _ in val:
        _jpeg(root / "val" / "images" / f, rng)
    (root / "val" / "val_annotations.txt").write_text("".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in val))
    return root


def expected(root, split):
    order = sorted(WNIDS)
    if split == "train":
        items = [(order.index(w), root / "train" / w / "images" / f"{w}_{k}.JPEG") for w in order for k in (0, 2, 10)]
    else:
        names = [("val_0.JPEG", WNIDS[0]), ("val_10.JPEG", WNIDS[0]), ("val_2.JPEG", WNIDS[1]),
                 ("val_3.JPEG", WNIDS[1]), ("val_1.JPEG", WNIDS[2])]
        items = sorted(((order.index(w), root / "val" / "images" / f) for f, w in names), key=lambda t: t[0])
    x = np.stack([_decoded(p) for _, p in items]).astype(np.float32) / 255
    return torch.from_numpy(x), torch.tensor([lbl for lbl, _ in items])


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("nested", [True, False])
def test_loads_official_layout(tmp_path, split, nested):
    root = make_tree(tmp_path / "tiny-imagenet-200" if nested else tmp_path / "d")
    x, y = data.load("tinyimagenet", split, tmp_path if nested else root)
    xe, ye = expected(root, split)
    assert x.dtype == torch.float32 and x.shape == (len(ye), 3, 64, 64)
    assert torch.equal(x, xe) and torch.equal(y, ye)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    root = make_tree(tmp_path / "tiny-imagenet-200")
    x, _ = data.load("tinyimagenet", "train", tmp_path)
    gray = x[1]  # class 0, image _2
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert not torch.equal(x[0, 0], x[0, 1])
    assert (root / "train").is_dir()


def test_resorted_val_layout_gives_same_split(tmp_path):
    root = make_tree(tmp_path / "a")
    official = data.load("tinyimagenet", "test", root)
    for f, w in [ln.split("\t")[:2] for ln in (root / "val" / "val_annotations.txt").read_text().splitlines()]:
        dst = root / "val" / w / "images" / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(root / "val" / "images" / f, dst)
    (root / "val" / "val_annotations.txt").unlink()
    data.clear_cache()
    resorted = data.load("tinyimagenet", "test", root)
    assert torch.equal(official[0], resorted[0]) and torch.equal(official[1], resorted[1])


def test_second_load_reads_the_disk_cache(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "tiny-imagenet-200")
    first = data.load("tinyimagenet", "train", tmp_path)
    cached = sorted(p.name for p in tinyimagenet.cache_dir().iterdir())
    assert len(cached) == 2 and all(n.startswith("tinyimagenet-train-") for n in cached)
    assert not any(p.name.endswith(".npy") for p in root.rglob("*"))  # nothing written next to the data

    def no_decoding(paths, workers=None):
        raise AssertionError("decoded again although the cache is valid")

    real_decode_all = tinyimagenet.decode_all
    monkeypatch.setattr(tinyimagenet, "decode_all", no_decoding)
    data.clear_cache()
    second = data.load("tinyimagenet", "train", tmp_path)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])

    # changing an image invalidates the cache (size/mtime enter the key)
    monkeypatch.setattr(tinyimagenet, "decode_all", real_decode_all)
    img = root / "train" / sorted(WNIDS)[0] / "images" / f"{sorted(WNIDS)[0]}_0.JPEG"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(img, format="JPEG")
    os.utime(img, ns=(1, 1))
    data.clear_cache()
    third = data.load("tinyimagenet", "train", tmp_path)
    assert third[0][0, 0].mean() > 0.9 and third[0][0, 2].mean() < 0.1


def test_corrupt_cache_is_rebuilt(tmp_path):
    make_tree(tmp_path / "tiny-imagenet-200")
    first = data.load("tinyimagenet", "test", tmp_path)
    for p in tinyimagenet.cache_dir().glob("*.x.npy"):
        p.write_bytes(p.read_bytes()[:100])
    data.clear_cache()
    assert torch.equal(data.load("tinyimagenet", "test", tmp_path)[0], first[0])


def test_unwritable_cache_warns_and_still_loads(tmp_path, monkeypatch):
    make_tree(tmp_path / "tiny-imagenet-200")
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("LIPCERT_CACHE_DIR", str(tmp_path / "file" / "sub"))
    with pytest.warns(data.DataWarning, match="could not write the TinyImageNet cache"):
        x, _ = data.load("tinyimagenet", "test", tmp_path)
    assert x.shape == (5, 3, 64, 64)


def test_fewer_classes_and_images_warn(tmp_path):
    make_tree(tmp_path / "tiny-imagenet-200")
    with pytest.warns(data.DataWarning) as rec:
        data.load("tinyimagenet", "train", tmp_path)
    msgs = " ".join(str(r.message) for r in rec)
    assert "3 classes, the official release has 200" in msgs and "official split has 100000" in msgs


# --- errors -------------------------------------------------------------------------------------

def test_missing_tree(tmp_path):
    with pytest.raises(data.DataError, match="no wnids.txt") as e:
        data.load("tinyimagenet", "train", tmp_path)
    assert str(tmp_path / "tiny-imagenet-200") in str(e.value) and "--data-dir" in str(e.value)


def test_missing_class_folder(tmp_path):
    root = make_tree(tmp_path / "tiny-imagenet-200")
    shutil.rmtree(root / "train" / WNIDS[2])
    with pytest.raises(data.DataError, match=f"missing folder .*{WNIDS[2]}/images for class {WNIDS[2]}"):
        data.load("tinyimagenet", "train", tmp_path)


def test_missing_val_image(tmp_path):
    root = make_tree(tmp_path / "tiny-imagenet-200")
    (root / "val" / "images" / "val_3.JPEG").unlink()
    with pytest.raises(data.DataError, match="val_3.JPEG is listed in .*val_annotations.txt but missing"):
        data.load("tinyimagenet", "test", tmp_path)


def test_missing_val_annotations(tmp_path):
    root = make_tree(tmp_path / "tiny-imagenet-200")
    (root / "val" / "val_annotations.txt").unlink()
    with pytest.raises(data.DataError, match="val_annotations.txt not found"):
        data.load("tinyimagenet", "test", tmp_path)


def test_unknown_class_in_annotations(tmp_path):
    root = make_tree(tmp_path / "tiny-imagenet-200")
    ann = root / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text().replace(WNIDS[1], "n00000000", 1))
    with pytest.raises(data.DataError, match="line 2: class n00000000 is not in"):
        data.load("tinyimagenet", "test", tmp_path)


def test_corrupt_jpeg(tmp_path):
    root = make_tree(tmp_path / "tiny-imagenet-200")
    bad = root / "val" / "images" / "val_1.JPEG"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(data.DataError, match=f"cannot decode image {bad}"):
        data.load("tinyimagenet", "test", tmp_path)


def test_wrong_image_size(tmp_path):
    root = make_tree(tmp_path / "tiny-imagenet-200")
    _jpeg(root / "val" / "images" / "val_1.JPEG", np.random.default_rng(1), size=32)
    with pytest.raises(data.DataError, match="expected a 64x64 image, got 32x32"):
        data.load("tinyimagenet", "test", tmp_path)
