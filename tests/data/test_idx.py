"""lipcert/data/idx.py: MNIST / Fashion-MNIST IDX files written by the tests in the real format."""

import gzip
import re

import numpy as np
import pytest
import torch

from lipcert import data
from lipcert.data.idx import read_idx

from .formats import idx_bytes, write_idx, write_mnist_like

pytestmark = pytest.mark.filterwarnings("ignore::lipcert.data.DataWarning")


def _check(x, y, expected):
    xe, ye = expected
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (len(xe), 1, 28, 28) and y.shape == (len(ye),)
    torch.testing.assert_close(x, torch.from_numpy(xe.astype(np.float32) / 255).unsqueeze(1), rtol=0, atol=0)
    assert torch.equal(y, torch.from_numpy(ye.astype(np.int64)))


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("sub", [".", "MNIST/raw", "mnist"])
def test_mnist_layouts_plain_and_gz(tmp_path, gz, sub):
    written = write_mnist_like(tmp_path / sub, np.random.default_rng(0), gz=gz)
    for split in ("train", "test"):
        _check(*data.load("mnist", split, tmp_path), written[split])


def test_dotted_file_names(tmp_path):
    written = write_mnist_like(tmp_path, np.random.default_rng(1), dotted=True)
    _check(*data.load("mnist", "test", tmp_path), written["test"])


def test_each_dataset_picks_its_own_folder(tmp_path):
    mnist = write_mnist_like(tmp_path / "MNIST" / "raw", np.random.default_rng(2))
    fashion = write_mnist_like(tmp_path / "FashionMNIST" / "raw", np.random.default_rng(3), gz=True)
    zalando = write_mnist_like(tmp_path / "z" / "fashion-mnist" / "data" / "fashion", np.random.default_rng(4), gz=True)
    _check(*data.load("mnist", "train", tmp_path), mnist["train"])
    _check(*data.load("fashion-mnist", "train", tmp_path), fashion["train"])
    _check(*data.load("fashion_mnist", "test", tmp_path / "z"), zalando["test"])


def test_data_dir_from_environment(tmp_path, monkeypatch):
    written = write_mnist_like(tmp_path, np.random.default_rng(5))
    monkeypatch.setenv("LIPCERT_DATA_DIR", str(tmp_path))
    _check(*data.load("mnist", "train"), written["train"])


def test_fewer_samples_than_official_warns(tmp_path):
    write_mnist_like(tmp_path, np.random.default_rng(6), n_train=3)
    with pytest.warns(data.DataWarning, match="official split has 60000"):
        data.load("mnist", "train", tmp_path)


def test_read_idx_other_element_types(tmp_path):
    a = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    f = np.linspace(-1, 1, 5).astype(">f8")
    assert np.array_equal(read_idx(write_idx(tmp_path / "a", a)), a)
    assert np.array_equal(read_idx(write_idx(tmp_path / "f.gz", f, gz=True)), f)


# --- errors: every message names the file/folder and says what to do ---------------------------

def test_no_data_dir(tmp_path):
    with pytest.raises(data.DataError, match=r"--data-dir DIR.*LIPCERT_DATA_DIR") as e:
        data.load("mnist", "train")
    assert "train-images-idx3-ubyte" in str(e.value)


def test_missing_data_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(data.DataError, match="does not exist") as e:
        data.load("fashion-mnist", "train", missing)
    assert str(missing) in str(e.value) and "FashionMNIST/raw" in str(e.value)


def test_data_dir_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(data.DataError, match="is a file"):
        data.load("mnist", "train", tmp_path / "f")


def test_empty_data_dir_lists_where_it_looked(tmp_path):
    with pytest.raises(data.DataError) as e:
        data.load("mnist", "test", tmp_path)
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte" in msg and str(tmp_path / "MNIST" / "raw") in msg and "--data-dir" in msg


def test_missing_label_file_is_named(tmp_path):
    write_mnist_like(tmp_path / "MNIST" / "raw", np.random.default_rng(7))
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte\[\.gz\] is\s+missing") as e:
        data.load("mnist", "train", tmp_path)
    assert str(tmp_path / "MNIST" / "raw") in str(e.value)


def _corrupt(tmp_path, name, payload):
    write_mnist_like(tmp_path, np.random.default_rng(8))
    (tmp_path / name).write_bytes(payload)
    return tmp_path / name


def test_bad_magic(tmp_path):
    good = idx_bytes(np.zeros((7, 28, 28), np.uint8))
    p = _corrupt(tmp_path, "train-images-idx3-ubyte", b"\x12\x34" + good[2:])
    with pytest.raises(data.DataError, match=re.escape(f"{p} is not an IDX file: bad magic number 12 34 08 03")):
        data.load("mnist", "train", tmp_path)


def test_png_renamed_as_idx_is_rejected(tmp_path):
    _corrupt(tmp_path, "train-labels-idx1-ubyte", b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(data.DataError, match="bad magic"):
        data.load("mnist", "train", tmp_path)


def test_truncated_file(tmp_path):
    good = idx_bytes(np.zeros((7, 28, 28), np.uint8))
    p = _corrupt(tmp_path, "train-images-idx3-ubyte", good[:-100])
    with pytest.raises(data.DataError, match=re.escape(f"{p} is truncated")):
        data.load("mnist", "train", tmp_path)


def test_truncated_inside_header(tmp_path):
    _corrupt(tmp_path, "train-images-idx3-ubyte", bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(data.DataError, match="truncated inside its header"):
        data.load("mnist", "train", tmp_path)


def test_empty_file(tmp_path):
    _corrupt(tmp_path, "train-labels-idx1-ubyte", b"")
    with pytest.raises(data.DataError, match="truncated: 0 bytes"):
        data.load("mnist", "train", tmp_path)


def test_trailing_bytes(tmp_path):
    good = idx_bytes(np.zeros(7, np.uint8))
    _corrupt(tmp_path, "train-labels-idx1-ubyte", good + b"\0\0")
    with pytest.raises(data.DataError, match="2 unexpected trailing bytes"):
        data.load("mnist", "train", tmp_path)


def test_truncated_gzip(tmp_path):
    blob = gzip.compress(idx_bytes(np.zeros((7, 28, 28), np.uint8)))
    write_mnist_like(tmp_path, np.random.default_rng(9), gz=True)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DataError, match="corrupt or truncated gzip"):
        data.load("mnist", "train", tmp_path)


def test_wrong_image_dims(tmp_path):
    _corrupt(tmp_path, "train-images-idx3-ubyte", idx_bytes(np.zeros((7, 27, 27), np.uint8)))
    with pytest.raises(data.DataError, match=r"shape \(N, 28, 28\), got uint8 \(7, 27, 27\)"):
        data.load("mnist", "train", tmp_path)


def test_labels_with_two_dims(tmp_path):
    _corrupt(tmp_path, "train-labels-idx1-ubyte", idx_bytes(np.zeros((7, 2), np.uint8)))
    with pytest.raises(data.DataError, match=r"labels of shape \(N,\)"):
        data.load("mnist", "train", tmp_path)


def test_images_and_labels_disagree_on_count(tmp_path):
    _corrupt(tmp_path, "train-labels-idx1-ubyte", idx_bytes(np.zeros(6, np.uint8)))
    with pytest.raises(data.DataError, match="has 7 images but .* has 6 labels"):
        data.load("mnist", "train", tmp_path)


def test_label_out_of_range(tmp_path):
    _corrupt(tmp_path, "train-labels-idx1-ubyte", idx_bytes(np.full(7, 10, np.uint8)))
    with pytest.raises(data.DataError, match="label 10 is out of range for 10 classes"):
        data.load("mnist", "train", tmp_path)


def test_images_swapped_with_labels(tmp_path):
    write_mnist_like(tmp_path, np.random.default_rng(10))
    imgs, lbls = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    a, b = imgs.read_bytes(), lbls.read_bytes()
    imgs.write_bytes(b)
    lbls.write_bytes(a)
    with pytest.raises(data.DataError, match="is this the right file"):
        data.load("mnist", "train", tmp_path)
