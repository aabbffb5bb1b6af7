"""lipcert/data/cifar.py: CIFAR-10/100 pickle batches written by the tests like the real ones."""

import os
import pickle

import numpy as np
import pytest
import torch

from lipcert import data
from lipcert.data.cifar import safe_load_pickle

from .formats import cifar_batch, py2_pickle_bytes, write_pickle

pytestmark = pytest.mark.filterwarnings("ignore::lipcert.data.DataWarning")

C10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def write_cifar10(directory, rng, py2=True, sizes=(3, 2, 4, 1, 2), n_test=3):
    out = {"train": ([], []), "test": ([], [])}
    for name, n, split in [*zip(C10_TRAIN, sizes, ["train"] * 5), ("test_batch", n_test, "test")]:
        d, x, labels = cifar_batch(rng, n, {"labels": 10})
        write_pickle(directory / name, d, py2=py2)
        out[split][0].append(x)
        out[split][1].extend(labels["labels"])
    return {s: (np.concatenate(v[0]), np.asarray(v[1])) for s, v in out.items()}


def write_cifar100(directory, rng, py2=True):
    out = {}
    for split, n in (("train", 5), ("test", 4)):
        d, x, labels = cifar_batch(rng, n, {"fine_labels": 100, "coarse_labels": 20})
        write_pickle(directory / split, d, py2=py2)
        out[split] = (x, np.asarray(labels["fine_labels"]))
    (directory / "meta").write_bytes(py2_pickle_bytes({"fine_label_names": ["a"] * 100}))
    return out


def _check(x, y, expected, n_classes=10):
    xe, ye = expected
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (len(xe), 3, 32, 32)
    # channel-major rows: 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    n, c, i, j = len(xe) - 1, 2, 5, 17
    assert x[n, c, i, j].item() == np.float32(xe[n, c * 1024 + i * 32 + j]) / np.float32(255)
    torch.testing.assert_close(x, torch.from_numpy(xe.reshape(-1, 3, 32, 32).astype(np.float32) / 255), rtol=0, atol=0)
    assert torch.equal(y, torch.from_numpy(ye.astype(np.int64)))
    assert y.max() < n_classes


@pytest.mark.parametrize("py2", [True, False])
def test_cifar10_official_layout(tmp_path, py2):
    written = write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(0), py2=py2)
    for split in ("train", "test"):
        _check(*data.load("cifar10", split, tmp_path), written[split])


def test_cifar10_batches_directly_in_data_dir(tmp_path):
    written = write_cifar10(tmp_path, np.random.default_rng(1))
    _check(*data.load("cifar-10", "train", tmp_path), written["train"])


@pytest.mark.parametrize("py2", [True, False])
def test_cifar100_fine_labels(tmp_path, py2):
    written = write_cifar100(tmp_path / "cifar-100-python", np.random.default_rng(2), py2=py2)
    for split in ("train", "test"):
        _check(*data.load("cifar100", split, tmp_path), written[split], n_classes=100)


def test_fewer_samples_warns(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(3))
    with pytest.warns(data.DataWarning, match="official split has 10000"):
        data.load("cifar10", "test", tmp_path)


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    d, _, _ = cifar_batch(np.random.default_rng(4), 2, {"labels": 10})
    d["labels"] = Evil()
    write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(4))
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(data.DataError, match=r"refusing to load global posix\.mkdir|refusing to load global os\.mkdir"):
        data.load("cifar10", "test", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps(print, protocol=2),                                  # a builtin function
    b"cos\nsystem\n(S'echo hi'\ntR.",                                 # classic protocol-0 exploit
    pickle.dumps(np.random.default_rng(0), protocol=2),               # numpy, but not an array
])
def test_only_array_globals_are_allowed(tmp_path, payload):
    p = tmp_path / "x.pkl"
    p.write_bytes(payload)
    with pytest.raises(data.DataError, match="refusing to load global"):
        safe_load_pickle(p)


def test_truncated_pickle(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(5))
    p = tmp_path / "data_batch_2"
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(data.DataError, match=f"{p} is not a valid CIFAR pickle batch.*truncated or corrupt"):
        data.load("cifar10", "train", tmp_path)


def test_garbage_file(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(6))
    (tmp_path / "test_batch").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(data.DataError, match="not a valid CIFAR pickle batch"):
        data.load("cifar10", "test", tmp_path)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(data=np.zeros((2, 1024), np.uint8)),
     r"uint8 array of shape \(N, 3072\), got uint8 \(2, 1024\)"),
    (lambda d: d.update(data=np.zeros((2, 3072), np.float32)), r"got float32 \(2, 3072\)"),
    (lambda d: d.update(labels=[1]), r"2 images but 1 labels"),
    (lambda d: d.update(labels=[1, 10]), r"labels outside 0..9"),
    (lambda d: d.pop("labels"), r"expected 'data' and 'labels'; is this the right dataset's file"),
])
def test_malformed_batches(tmp_path, mutate, message):
    write_cifar10(tmp_path, np.random.default_rng(7))
    d, _, _ = cifar_batch(np.random.default_rng(7), 2, {"labels": 10})
    mutate(d)
    write_pickle(tmp_path / "test_batch", d)
    with pytest.raises(data.DataError, match=message):
        data.load("cifar10", "test", tmp_path)


def test_cifar10_file_given_for_cifar100(tmp_path):
    d, _, _ = cifar_batch(np.random.default_rng(8), 2, {"labels": 10})
    write_pickle(tmp_path / "test", d)
    with pytest.raises(data.DataError, match="expected 'data' and 'fine_labels'"):
        data.load("cifar100", "test", tmp_path)


def test_missing_batch_is_named(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(9))
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(data.DataError, match=r"cifar-10-batches-py is missing data_batch_3\."):
        data.load("cifar10", "train", tmp_path)


def test_not_found_names_layout(tmp_path):
    with pytest.raises(data.DataError) as e:
        data.load("cifar100", "train", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cifar-100-python") in msg and "--data-dir" in msg and "never downloads" in msg
