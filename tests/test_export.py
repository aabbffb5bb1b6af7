"""Exported models (safetensors, TorchScript, ONNX) give lipcert's logits without lipcert.

Tolerance: the l-inf distances are computed exactly in every format (subtraction, abs and max are
correctly rounded), but normalisation, linear layers and convolutions of the l2 CNN may sum in a
different order in another runtime: float32 sums of <= ~10^3 terms of size O(1) agree to ~1e-4
absolute; we allow rtol = atol = 1e-4.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

import lipcert
from lipcert import models
from lipcert.checkpoint import CheckpointCorruptError, model_payload, save_atomic
from lipcert.cli import main
from lipcert.export import ExportError, export_metadata, export_model, load_safetensors, read_metadata
from lipcert.nn import set_p

TOL = dict(rtol=1e-4, atol=1e-4)
CASES = {
    "linf_mlp": dict(in_shape=[1, 8, 8], num_classes=10, width=32, depth=3, mean=[0.3], std=0.4),
    "linf_lenet": dict(in_shape=[1, 28, 28], channels=[2, 4], fc=[8, 8], num_classes=10, mean=[0.13], std=0.31,
                       conv1_padding=2),
    "4c3f": dict(in_shape=[3, 16, 16], width=0.125, num_classes=5, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3]),
}
SUFFIX = {"safetensors": ".safetensors", "torchscript": ".pt", "onnx": ".onnx"}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.build(name, **CASES[name])
    with torch.no_grad():  # non-trivial running means, as after training
        for buf_name, buf in model.named_buffers():
            if buf_name.endswith("running_mean"):
                buf.normal_()
    set_p(model, math.inf)
    return model.eval()


def _inputs(name: str, n: int = 5) -> torch.Tensor:
    return torch.rand(n, *CASES[name]["in_shape"], generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every model in every format that can be written here (onnx only with the package)."""
    root = tmp_path_factory.mktemp("export")
    fmts = ["safetensors", "torchscript"] + (["onnx"] if _has("onnx") else [])
    files = {}
    for name in CASES:
        model = _model(name)
        torch.save(_inputs(name), root / f"{name}.x.pt")
        torch.save(model(_inputs(name)).detach(), root / f"{name}.y.pt")
        for fmt in fmts:
            files[name, fmt] = root / f"{name}{SUFFIX[fmt]}"
            export_model(model, fmt, files[name, fmt])
    return root, files


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("name", list(CASES))
def test_safetensors_rebuilt_by_lipcert(exported, name):
    root, files = exported
    model = load_safetensors(files[name, "safetensors"])
    torch.testing.assert_close(model(_inputs(name)), torch.load(root / f"{name}.y.pt"), rtol=0, atol=0)
    from safetensors.torch import load_file

    plain = load_file(str(files[name, "safetensors"]))  # readable by safetensors alone
    assert set(plain) == set(_model(name).state_dict())


def test_torchscript_loads_in_a_process_without_lipcert(exported):
    root, files = exported
    code = (
        "import sys, torch\n"
        "root = sys.argv[1]\n"
        f"for name in {list(CASES)!r}:\n"
        "    m = torch.jit.load(f'{root}/{name}.pt')\n"
        "    torch.save(m(torch.load(f'{root}/{name}.x.pt')), f'{root}/{name}.ts.pt')\n"
        "print('lipcert' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, cwd=root,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
    for name in CASES:
        torch.testing.assert_close(torch.load(root / f"{name}.ts.pt"), torch.load(root / f"{name}.y.pt"), **TOL)
        meta = read_metadata(files[name, "torchscript"])
        assert json.loads(meta["model_spec"])["name"] == name


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_runs_in_onnxruntime(exported, name):
    ort = pytest.importorskip("onnxruntime")
    root, files = exported
    sess = ort.InferenceSession(str(files[name, "onnx"]), providers=["CPUExecutionProvider"])
    x = torch.cat([_inputs(name), _inputs(name)[:2]])  # batch 7: not the traced batch of 2
    (y,) = sess.run(None, {"input": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), _model(name)(x).detach(), **TOL)
    meta = read_metadata(files[name, "onnx"])
    assert meta["content_hash"].startswith("sha256:") and meta["lipcert_version"] == lipcert.__version__


def test_metadata_states_a_true_lipschitz_bound():
    """The stated constant bounds |f(x) - f(x')|_inf / |x - x'|_inf on random pairs (l-inf nets)."""
    for name in ("linf_mlp", "linf_lenet"):
        model = _model(name).double()
        meta = export_metadata(_model(name))
        assert meta["norm"] == "linf" and meta["certificate"] == "linf_margin"
        lip = float(meta["lipschitz"])
        x = _inputs(name, 64).double()
        x2 = (x + 0.01 * (2 * torch.rand_like(x) - 1)).clamp(0, 1)
        ratio = (model(x) - model(x2)).abs().amax(1) / (x - x2).flatten(1).abs().amax(1)
        assert ratio.max() <= lip * (1 + 1e-9) and ratio.max() > 0.05 * lip
        assert json.loads(meta["normalize_mean"]) == CASES[name]["mean"]
    meta = export_metadata(_model("4c3f"))
    assert meta["norm"] == "l2" and "lipschitz" not in meta and "lipcert bounds" in meta["lipschitz_note"]


def test_relaxed_model_is_refused(tmp_path):
    model = _model("linf_mlp")
    set_p(model, 8.0)
    with pytest.raises(ExportError, match="p = 8.*model.pt"):
        export_model(model, "torchscript", tmp_path / "m.pt")


def test_tampered_safetensors_is_detected(exported, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _, files = exported
    path = files["linf_mlp", "safetensors"]
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    key = next(k for k in state if k.endswith("weight"))
    state[key].view(-1)[0] += 0.5
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointCorruptError, match="corrupted"):
        load_safetensors(tmp_path / "bad.safetensors")
    load_safetensors(tmp_path / "bad.safetensors", verify=False)


def test_cli_export(tmp_path, capsys):
    model = _model("linf_mlp")
    save_atomic(model_payload(model, kind="model"), tmp_path / "model.pt")
    out = tmp_path / "m.safetensors"
    assert main(["export", str(tmp_path / "model.pt"), "--format", "safetensors", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "lipschitz: 2.4999" in text and "certificate: linf_margin" in text
    torch.testing.assert_close(load_safetensors(out)(_inputs("linf_mlp")), model(_inputs("linf_mlp")))
    set_p(model, 8.0)
    save_atomic(model_payload(model, kind="train_state"), tmp_path / "last.pt")
    assert main(["export", str(tmp_path / "last.pt"), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 2
    assert "export the finished run's model.pt" in capsys.readouterr().err
