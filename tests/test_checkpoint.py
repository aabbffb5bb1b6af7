"""Checkpoints: atomic, weights-only, clear errors on corrupt or foreign files."""

from __future__ import annotations

import os
import pickle
import re

import pytest
import torch

import lipcert
from lipcert.checkpoint import (
    HASH_KEY,
    CheckpointCorruptError,
    CheckpointError,
    CheckpointWarning,
    content_hash,
    load_model,
    model_payload,
    read,
    save_atomic,
)
from lipcert.nn import current_p, set_p
from tests.conftest import tiny_linf_net


def test_round_trip_rebuilds_model_and_p(tmp_path):
    net = tiny_linf_net()
    set_p(net, 8.0)
    save_atomic(model_payload(net, kind="model"), tmp_path / "m.pt")
    loaded = lipcert.load(tmp_path / "m.pt")
    assert not loaded.training and current_p(loaded) == 8.0
    x = torch.rand(4, 1, 6, 6)
    net.eval()
    torch.testing.assert_close(loaded(x), net(x))


def test_truncated_and_corrupt_files(tmp_path):
    net = tiny_linf_net()
    path = tmp_path / "m.pt"
    save_atomic(model_payload(net), path)
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(tmp_path / "trunc.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable"):
        read(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a lipcert checkpoint"):
        read(tmp_path / "foreign.pt")


@pytest.mark.parametrize("content", [b"hello\n", b"train:\n  epochs: 2\n", b"\x80\x02}q\x00.", bytes(range(256))])
def test_text_and_random_files_are_not_checkpoints(tmp_path, content):
    """Arbitrary bytes reach torch's legacy unpickler, which failed with a bare KeyError."""
    (tmp_path / "x.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="not a (readable )?lipcert checkpoint"):
        read(tmp_path / "x.pt")


def test_directory_is_named_as_such(tmp_path):
    save_atomic(model_payload(tiny_linf_net()), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="is a directory.*DIR/model.pt"):
        read(tmp_path)
    with pytest.raises(CheckpointError, match="is a directory"):
        read(tmp_path.parent)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/lipcert_pwned",))


def test_loading_never_executes_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "lipcert-checkpoint", "version": 1, "payload": _Evil()}, path)
    if os.path.exists("/tmp/lipcert_pwned"):
        os.remove("/tmp/lipcert_pwned")
    with pytest.raises(CheckpointError):
        read(path)
    assert not os.path.exists("/tmp/lipcert_pwned")
    # a plain pickle, too
    path.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError):
        read(path)
    assert not os.path.exists("/tmp/lipcert_pwned")


def test_mismatched_weights_are_clear(tmp_path):
    net = tiny_linf_net(width=32)
    payload = model_payload(net)
    payload["model_spec"] = {"name": "linf_mlp", "kwargs": {**payload["model_spec"]["kwargs"], "width": 16}}
    save_atomic(payload, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "m.pt")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save_atomic({"a": torch.ones(1)}, path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_atomic({"a": torch.zeros(1)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind


# ------------------------------------------------------------------ integrity (content hash)
def _saved(tmp_path, **meta):
    net = tiny_linf_net()
    path = tmp_path / "m.pt"
    save_atomic(model_payload(net, kind="model", **meta), path)
    return net, path


def test_hash_is_written_and_verified(tmp_path):
    _, path = _saved(tmp_path)
    payload = read(path)
    record = payload[HASH_KEY]
    assert record["algorithm"] == "sha256" and len(record["digest"]) == 64
    assert set(record["tensors"]) == {f"model/{k}" for k in payload["model"]}
    assert content_hash(payload) == record  # canonical: recomputed after a save/load round trip


def test_rewritten_tensor_value_is_corruption(tmp_path):
    """One value changed via torch.load / torch.save without recomputing the hash."""
    _, path = _saved(tmp_path)
    raw = torch.load(path, weights_only=True)
    name = next(k for k, t in raw["model"].items() if t.is_floating_point() and t.numel())
    raw["model"][name].view(-1)[0] += 1e-3
    torch.save(raw, path)
    with pytest.raises(CheckpointCorruptError, match=rf"corrupted.*tensors changed: model/{re.escape(name)}.*--ignore-corruption"):
        read(path)
    with pytest.raises(CheckpointCorruptError):
        lipcert.load(path)
    with pytest.warns(CheckpointWarning, match="corrupted"):
        model = lipcert.load(path, verify=False)
    assert torch.isfinite(model(torch.rand(2, 1, 6, 6))).all()


def test_raw_byte_flip_inside_tensor_storage_is_corruption(tmp_path):
    """torch's zip reader does not check CRCs: a flipped bit in a tensor's bytes loads silently
    without the hash."""
    net, path = _saved(tmp_path)
    w = net.state_dict()
    name = max(w, key=lambda k: w[k].numel())
    data = bytearray(path.read_bytes())
    needle = w[name].contiguous().view(-1)[:4].numpy().tobytes()
    at = data.find(needle)
    assert at > 0 and data.find(needle, at + 1) < 0
    data[at + 1] ^= 0x10
    path.write_bytes(bytes(data))
    plain = torch.load(path, weights_only=True)  # the file still reads: only the hash notices
    assert not torch.equal(plain["model"][name], w[name])
    with pytest.raises(CheckpointCorruptError, match=f"model/{re.escape(name)}"):
        load_model(path)


def test_changed_spec_is_corruption(tmp_path):
    _, path = _saved(tmp_path)
    raw = torch.load(path, weights_only=True)
    raw["lp_exponent"] = 8.0
    torch.save(raw, path)
    with pytest.raises(CheckpointCorruptError, match="model spec / p / kind"):
        read(path)


def test_old_checkpoint_without_hash_warns(tmp_path):
    _, path = _saved(tmp_path)
    raw = torch.load(path, weights_only=True)
    del raw[HASH_KEY]
    torch.save(raw, path)
    with pytest.warns(CheckpointWarning, match="no content hash"):
        lipcert.load(path)


def test_non_finite_weights(tmp_path):
    net = tiny_linf_net()
    name = next(k for k, t in net.state_dict().items() if t.is_floating_point() and t.numel())
    with torch.no_grad():
        net.state_dict()[name].view(-1)[0] = float("nan")
    save_atomic(model_payload(net, kind="model"), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=f"non-finite.*{re.escape(name)}"):
        load_model(tmp_path / "model.pt")
    save_atomic(model_payload(net, kind="train_state"), tmp_path / "last.pt")
    with pytest.warns(CheckpointWarning, match="diverged"):
        load_model(tmp_path / "last.pt")


def test_strict_load_refuses_extra_tensors(tmp_path):
    net = tiny_linf_net()
    payload = model_payload(net, kind="model")
    payload["model"] = {**payload["model"], "extra.weight": torch.zeros(2)}
    save_atomic(payload, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "m.pt")


def test_cli_refuses_a_corrupted_checkpoint_unless_told(tmp_path, capsys):
    from lipcert import models
    from lipcert.cli import main

    net = models.build("linf_mlp", in_shape=[1, 8, 8], num_classes=10, width=16, depth=2, mean=[0.3], std=0.4).eval()
    path = tmp_path / "model.pt"
    save_atomic(model_payload(net, kind="model", config={"data": {"name": "digits"}}), path)
    raw = torch.load(path, weights_only=True)
    raw["model"]["0.mean"] = raw["model"]["0.mean"] + 0.01
    torch.save(raw, path)
    assert main(["certify", str(path), "--eps", "0.01", "--limit", "20"]) == 2
    err = capsys.readouterr().err
    assert "is corrupted" in err and "tensors changed: model/0.mean" in err and "--ignore-corruption" in err
    with pytest.warns(CheckpointWarning, match="corrupted"):
        assert main(["certify", str(path), "--eps", "0.01", "--limit", "20", "--ignore-corruption"]) == 0
