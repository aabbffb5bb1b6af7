"""Your own data (lipcert/data/custom.py): image folders and array files, and a clear error naming
the file for every kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lipcert import data
from lipcert.data import DataError, channel_stats


def write_images(root, classes=("cat", "dog", "emu"), n=6, size=(8, 8), mode="L", seed=0):
    """``n`` images of ``size`` (width, height) per class; class c is bright in its own band of columns."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = rng.integers(0, 60, (size[1], size[0]), dtype=np.uint8)
            a[:, (2 * c) % size[0]] = 250
            img = Image.fromarray(a, "L")
            if mode != "L":
                img = img.convert(mode)
            img.save(d / f"{i}.png")
    return root


def test_imagefolder_fraction_split(tmp_path):
    root = write_images(tmp_path / "imgs", n=10)
    (root / ".DS_Store").write_bytes(b"\0junk")  # hidden files are skipped
    inf = data.info("imagefolder", root)
    assert inf.in_shape == (1, 8, 8) and inf.num_classes == 3 and inf.classes == ("cat", "dog", "emu") and inf.custom
    assert inf.train_size + inf.test_size == 30 and inf.test_size == 6  # 2 of 10 per class
    x, y = data.load("imagefolder", "train", root)
    xt, yt = data.load(f"imagefolder:{root}", "test")  # the KIND:PATH form is the same dataset
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.bincount(yt).tolist() == [2, 2, 2] and torch.bincount(y).tolist() == [8, 8, 8]
    # pixels are the files' bytes / 255: image 0 of "dog" (label 1) is somewhere in one of the splits
    ref = torch.from_numpy(np.array(Image.open(root / "dog" / "0.png"))).float() / 255
    both = torch.cat([x, xt])
    assert (both[:, 0] - ref).abs().flatten(1).amax(1).min() == 0
    mean, std = channel_stats(x)
    assert inf.mean == pytest.approx(mean, abs=1e-12) and inf.std_per_channel == pytest.approx(std, abs=1e-12)
    # the split is seeded: the same seed the same split, another seed another one
    x2, _ = data.load("imagefolder", "train", root)
    assert torch.equal(x, x2)
    x3, _ = data.load("imagefolder", "train", root, split_seed=1)
    assert not torch.equal(x, x3)


def test_imagefolder_train_test_folders_and_recorded_classes(tmp_path):
    write_images(tmp_path / "d" / "train", n=4)
    write_images(tmp_path / "d" / "test", classes=("dog", "emu"), n=2, seed=1)
    root = tmp_path / "d"
    inf = data.info("imagefolder", root)
    assert (inf.train_size, inf.test_size, inf.classes) == (12, 4, ("cat", "dog", "emu"))
    _, yt = data.load("imagefolder", "test", root)
    assert sorted(set(yt.tolist())) == [1, 2]  # numbered by the training classes, not by the test folders
    # recorded classes (a checkpoint's) fix the numbering
    _, yt = data.load("imagefolder", "test", root, classes=["emu", "dog", "cat"])
    assert sorted(set(yt.tolist())) == [0, 1]
    with pytest.raises(DataError, match=r"\['emu'\] are not among the model's classes"):
        data.load("imagefolder", "test", root, classes=["cat", "dog"])
    (tmp_path / "e" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no test/ folder"):
        data.info("imagefolder", tmp_path / "e")


def test_imagefolder_colour_and_alpha(tmp_path):
    root = write_images(tmp_path / "rgb", mode="RGBA")
    inf = data.info("imagefolder", root)
    assert inf.in_shape == (3, 8, 8) and len(inf.mean) == 3  # alpha dropped


def test_mixed_sizes_name_both_files(tmp_path):
    root = write_images(tmp_path / "imgs")
    Image.fromarray(np.zeros((12, 10), np.uint8), "L").save(root / "dog" / "big.png")
    with pytest.raises(DataError, match="mixed image sizes") as err:
        data.info("imagefolder", root)
    assert str(root / "cat" / "0.png") in str(err.value) and str(root / "dog" / "big.png") in str(err.value)
    assert "8x8" in str(err.value) and "10x12" in str(err.value)


def test_mixed_modes_name_both_files(tmp_path):
    root = write_images(tmp_path / "imgs")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8), "RGB").save(root / "emu" / "colour.png")
    with pytest.raises(DataError, match="mixed image modes") as err:
        data.info("imagefolder", root)
    assert str(root / "emu" / "colour.png") in str(err.value) and str(root / "cat" / "0.png") in str(err.value)


@pytest.mark.parametrize("bad", ["notes.txt", "broken.png"])
def test_non_image_files_are_named(tmp_path, bad):
    root = write_images(tmp_path / "imgs")
    (root / "dog" / bad).write_text("not an image")
    with pytest.raises(DataError) as err:
        data.info("imagefolder", root)
    assert str(root / "dog" / bad) in str(err.value)


def test_empty_class_folder_and_single_class(tmp_path):
    root = write_images(tmp_path / "imgs")
    (root / "fox").mkdir()
    with pytest.raises(DataError, match="fox is empty"):
        data.info("imagefolder", root)
    one = write_images(tmp_path / "one", classes=("cat",))
    with pytest.raises(DataError, match="only one class"):
        data.info("imagefolder", one)
    with pytest.raises(DataError, match="does not exist"):
        data.info("imagefolder", tmp_path / "missing")
    with pytest.raises(DataError, match="needs a path"):
        data.info("imagefolder")


# --------------------------------------------------------------------------------- arrays
def _xy(n=30, k=3, seed=0):
    g = np.random.default_rng(seed)
    return g.integers(0, 256, (n, 2, 4, 4), dtype=np.uint8), np.arange(n) % k


def _save(path, arrays):
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    elif path.suffix == ".pt":
        torch.save({k: torch.as_tensor(v) for k, v in arrays.items()}, path)
    else:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
    return path


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".safetensors"])
def test_arrays_files(tmp_path, suffix):
    x, y = _xy()
    xt, yt = _xy(9, seed=1)
    f = _save(tmp_path / f"d{suffix}", {"x": x, "y": y, "x_test": xt, "y_test": yt})
    inf = data.info("arrays", f)
    assert inf.in_shape == (2, 4, 4) and inf.num_classes == 3 and (inf.train_size, inf.test_size) == (30, 9)
    xx, yy = data.load("arrays", "train", f)
    assert torch.equal(xx, torch.from_numpy(x).float() / 255) and torch.equal(yy, torch.from_numpy(y).long())
    assert torch.equal(data.load("arrays", "test", f)[1], torch.from_numpy(yt).long())


def test_arrays_floats_shapes_and_split(tmp_path):
    x, y = _xy(40)
    f = _save(tmp_path / "f.npz", {"x": (x[:, 0] / 255).astype(np.float32), "y": y})  # (N, H, W) floats, no test set
    inf = data.info("arrays", f)
    assert inf.in_shape == (1, 4, 4) and (inf.train_size, inf.test_size) == (31, 9)  # round(0.2 * 14, 13, 13)
    v = _save(tmp_path / "v.npz", {"x": (x.reshape(40, -1) / 255.0), "y": y})  # vectors
    assert data.info("arrays", v).in_shape == (1, 1, 32)


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.full((6, 1, 2, 2), 3.0), "y": np.arange(6) % 2}, r"values lie in \[3, 3\].*must be in \[0, 1\]"),
    ({"x": np.full((6, 1, 2, 2), 200.0), "y": np.arange(6) % 2}, "divide by 255"),
    ({"x": np.zeros((6, 1, 2, 2), np.int64), "y": np.arange(6) % 2}, "dtype int64"),
    ({"x": np.zeros((6, 1, 2, 2)), "y": np.array([0, 1, 0.5, 1, 0, 1])}, r"integer class indices.*0\.5 at index 2"),
    ({"x": np.zeros((6, 1, 2, 2)), "y": np.array([0, 1, -1, 1, 0, 1])}, r"y\[2\] = -1"),
    ({"x": np.zeros((6, 1, 2, 2)), "y": np.arange(6) % 2, "x_test": np.zeros((2, 1, 2, 2)), "y_test": np.array([0, 2])},
     "label 2 .* outside the 2 classes"),
    ({"x": np.zeros((6, 1, 2, 2)), "y": np.zeros(6, np.int64)}, "only one class"),
    ({"x": np.zeros((6, 1, 2, 2)), "y": np.array([0, 2, 0, 2, 0, 2])}, r"class\(es\) \['1'\] have no training samples"),
    ({"x": np.zeros((6, 8, 8, 3)), "y": np.arange(6) % 2}, "channels-last"),
    ({"x": np.zeros((6, 1, 2, 2)), "y": np.arange(5) % 2}, "5 labels but the inputs have 6"),
    ({"x": np.zeros((6, 1, 2, 2)), "y": np.arange(6) % 2, "x_test": np.zeros((2, 1, 2, 2))}, "only one of x_test"),
    ({"inputs": np.zeros((6, 1, 2, 2))}, "no 'x' array"),
])
def test_bad_arrays_name_the_file(tmp_path, arrays, message):
    f = _save(tmp_path / "bad.npz", arrays)
    with pytest.raises(DataError, match=message) as err:
        data.info("arrays", f)
    assert str(f) in str(err.value)


def test_pt_with_code_is_refused(tmp_path):
    f = tmp_path / "obj.pt"
    torch.save({"x": torch.zeros(4, 1, 2, 2), "y": torch.arange(4) % 2, "z": object()}, f)
    with pytest.raises(DataError, match="weights_only"):
        data.info("arrays", f)


def test_config_options_only_for_custom_data():
    assert data.config_options({"name": "digits", "classes": None}) == {}
    assert data.config_options({"name": "imagefolder", "classes": ["a", "b"], "test_fraction": None, "split_seed": 0}) == \
        {"classes": ["a", "b"], "split_seed": 0}
    with pytest.raises(DataError, match="apply only to your own data"):
        data.load("digits", "test", classes=["a"])


def test_configs_saved_before_the_own_data_keys_still_resume():
    from lipcert.config import Config, differences

    new = Config().to_dict()
    old = Config().to_dict()
    for k in ("classes", "test_fraction", "split_seed"):
        del old["data"][k]
    assert differences(old, new) == []
    new["data"]["classes"] = ["a", "b"]
    assert differences(old, new) == ["data.classes: None != ['a', 'b']"]
