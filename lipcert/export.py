"""Export a lipcert model for deployment stacks that do not have lipcert: safetensors, TorchScript, ONNX.

Every format carries the same metadata (:func:`export_metadata`, strings only): the certificate
kind and norm, the Lipschitz constant where the model states one, the input normalisation (mean,
std; it is the model's first layer, so exported models take raw [0, 1] inputs), input shape,
classes, lipcert version, the model's content hash (:func:`lipcert.checkpoint.content_hash`) and
the lipcert model spec (registry name + keyword arguments) as JSON.

* ``safetensors``: the tensors of the state dict plus the metadata. A safetensors file has no
  architecture; :func:`load_safetensors` rebuilds the model from the stored spec with lipcert
  and checks the content hash.
* ``torchscript``: ``torch.jit.trace`` of the evaluation model at p = inf; ``torch.jit.load``
  runs it without lipcert. Metadata in the archive's ``extra_files`` (``lipcert.json``).
* ``onnx``: ``torch.onnx.export`` (the TorchScript-based exporter, opset 17) with a dynamic batch
  axis; metadata in the model's ``metadata_props``. Needs ``pip install lipcert[export]``.

The l-inf-dist layers call lipcert's custom ops (torch.library), which neither TorchScript nor
ONNX know. While tracing, :func:`plain_torch_distances` swaps in ``max_i |x_i - w_i|`` written
with plain torch ops (``(x[:, None, :] - w[None]).abs().amax(-1)``, in chunks of output units so
a temporary holds at most batch x 2^20 elements), which both formats express with standard ops;
tests compare the exported logits to lipcert's. Only models at p = inf (the certified form, as in
``model.pt``) can be exported.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from . import __version__, checkpoint
from .certify import norm_of
from .nn import current_p, set_p

FORMATS = ("safetensors", "torchscript", "onnx")
#: elements of one (B, n, D) temporary of the plain distance per sample of the batch
CHUNK_PER_SAMPLE = 1 << 20
METADATA_FILE = "lipcert.json"


class ExportError(ValueError):
    """A model that cannot be exported in the asked format (or an export that came out wrong)."""


def plain_lp_dist(x: Tensor, w: Tensor, p: float) -> Tensor:
    """``||x_b - w_n||_inf`` (B, N) in plain torch ops (for tracing); only p = inf."""
    if not math.isinf(float(p)):
        raise ExportError(f"export needs the model at p = inf (the certified form); a layer has p = {p:g}")
    step = max(1, CHUNK_PER_SAMPLE // max(1, w.shape[1]))
    parts = [(x[:, None, :] - w[None, s : s + step, :]).abs().amax(-1) for s in range(0, w.shape[0], step)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _unfold_patches(layer, x: Tensor) -> tuple[Tensor, int, int]:
    """``LinfDistConv2d._patches`` with ``F.unfold`` (im2col, which ONNX expresses with a dynamic
    batch; ``Tensor.unfold`` of a padded input is not exportable). Same (groups, B*L, D) layout:
    features in (kernel row, kernel column, channel) order, as ``LinfDistConv2d._weight_cols``
    orders the filters."""
    import torch.nn.functional as F

    ho, wo = layer.output_shape(x.shape[2], x.shape[3])
    ph, pw = layer.padding
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph), value=layer.pad_value)
    cols = F.unfold(x, layer.kernel_size, stride=layer.stride)  # (B, C*kh*kw, L)
    b = x.shape[0]
    kh, kw = layer.kernel_size
    cg = layer.patch_features // (kh * kw)  # channels per group
    cols = cols.reshape(b, layer.groups, cg, kh * kw, ho * wo).permute(1, 0, 4, 3, 2)  # unfold's (c, kh, kw) -> (kh, kw, c)
    return cols.reshape(layer.groups, b * ho * wo, layer.patch_features), ho, wo


@contextlib.contextmanager
def plain_torch_distances() -> Iterator[None]:
    """Within the block, l-inf-dist layers compute distances with :func:`plain_lp_dist` and
    convolutions take their patches with ``F.unfold`` (for tracing; not thread-safe)."""
    from .nn import linf_conv, relaxation

    saved = relaxation.lp_dist, linf_conv.LinfDistConv2d._patches
    relaxation.lp_dist = plain_lp_dist
    linf_conv.LinfDistConv2d._patches = _unfold_patches
    try:
        yield
    finally:
        relaxation.lp_dist, linf_conv.LinfDistConv2d._patches = saved


def _check_exportable(model: nn.Module) -> None:
    if getattr(model, "lipcert_spec", None) is None:
        raise ExportError("the model was not built by lipcert.models.build, so its spec cannot be stored")
    p = current_p(model)
    if p is not None and not math.isinf(p):
        raise ExportError(f"the model is at p = {p:g} (a training state in the l_p phase); export the finished "
                          "run's model.pt, which is at p = inf")


def model_hash(model: nn.Module) -> str:
    """The content hash (sha256) of the model alone: spec, p and its state dict."""
    return checkpoint.content_hash(checkpoint.model_payload(model, kind="model"))["digest"]


def export_metadata(model: nn.Module, source: str | None = None) -> dict[str, str]:
    """The string metadata every format stores (see the module docstring)."""
    spec = model.lipcert_spec
    kwargs = spec.get("kwargs", {})
    kind = getattr(model, "certificate", None)
    meta = {
        "format": "lipcert-export",
        "lipcert_version": __version__,
        "model_spec": json.dumps(spec, sort_keys=True),
        "content_hash": "sha256:" + model_hash(model),
        "certificate": str(kind),
        "norm": norm_of(kind) or "unknown",  # as its certifiers declare it (lipcert.certify's registry)
        "input": "raw pixels in [0, 1], shape (batch, " + ", ".join(map(str, kwargs.get("in_shape", []))) + ")"
                 + "; the normalisation below is inside the model",
        "input_shape": json.dumps(list(kwargs.get("in_shape", []))),
        "num_classes": str(kwargs.get("num_classes", "")),
        "normalize_mean": json.dumps(kwargs.get("mean")),
        "normalize_std": json.dumps(kwargs.get("std")),
    }
    if source:
        meta["source"] = source
    if kind == "linf_margin" and hasattr(model, "linf_lipschitz"):
        meta["lipschitz"] = repr(float(model.linf_lipschitz()))
        meta["lipschitz_meaning"] = ("upper bound of the l-inf Lipschitz constant of every logit w.r.t. the raw input "
                                     "(product of the layers' constants, 1/std of the normalisation included); a sample "
                                     "is certified at radius (top-1 logit - runner-up) / (2 * lipschitz), before lipcert's "
                                     "floating-point correction (use lipcert certify for the sound radius)")
    elif kind == "l2_lipschitz":
        meta["lipschitz_note"] = ("not stored: the l2 bound of this model needs power iteration and proof machinery; "
                                  "compute it with `lipcert bounds CHECKPOINT`")
    else:
        meta["lipschitz_note"] = f"not stored: {kind} models are certified by interval bounds, not by one constant"
    return meta


def _example(model: nn.Module, batch: int = 2) -> Tensor:
    shape = model.lipcert_spec.get("kwargs", {}).get("in_shape")
    if not shape:
        raise ExportError("the model spec records no in_shape; cannot build an example input to trace")
    return torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))


def _traced(model: nn.Module) -> torch.jit.ScriptModule:
    x = _example(model)
    with plain_torch_distances(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, (x,), check_trace=False)
    graph = str(traced.inlined_graph)
    if "lipcert::" in graph:
        raise ExportError("the traced graph still calls lipcert's custom ops; it would not load without lipcert")
    return traced


def export_model(model: nn.Module, fmt: str, out: str | Path, source: str | None = None) -> dict[str, str]:
    """Write ``model`` (eval mode, on the CPU, at p = inf) to ``out`` in format ``fmt``; returns the metadata."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    _check_exportable(model)
    model = model.to("cpu").eval()
    out = Path(out)
    meta = export_metadata(model, source)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(out), metadata=meta)
    elif fmt == "torchscript":
        traced = _traced(model)
        torch.jit.save(traced, str(out), _extra_files={METADATA_FILE: json.dumps(meta, indent=2)})
    else:
        _export_onnx(model, out, meta)
    return meta


def _export_onnx(model: nn.Module, out: Path, meta: dict[str, str]) -> None:
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'lipcert[export]' (onnx, onnxruntime)") from None
    x = _example(model)
    with plain_torch_distances(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings and the exporter's deprecation notice
        torch.onnx.export(model, (x,), str(out), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load(str(out))
    if any(node.domain not in ("", "ai.onnx") for node in proto.graph.node):
        raise ExportError("the ONNX graph uses non-standard operators; it would not run in plain ONNX runtimes")
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))


def export_checkpoint(path: str | Path, fmt: str, out: str | Path, verify: bool = True, use_ema: bool = True) -> dict[str, str]:
    """:func:`export_model` of the model in checkpoint ``path`` (content hash checked unless ``verify=False``)."""
    model = checkpoint.load_model(path, use_ema=use_ema, verify=verify)
    meta = export_model(model, fmt, out, source=Path(path).name)
    return meta


def read_metadata(path: str | Path) -> dict[str, str]:
    """The lipcert metadata of an exported file (format from the file name's suffix or its contents)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        return {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    files = {METADATA_FILE: ""}
    torch.jit.load(str(path), _extra_files=files)
    return json.loads(files[METADATA_FILE]) if files[METADATA_FILE] else {}


def load_safetensors(path: str | Path, verify: bool = True) -> nn.Module:
    """Rebuild a model exported as safetensors with lipcert (eval mode, p = inf); ``verify`` checks
    that the rebuilt model's content hash is the one stored at export."""
    from safetensors import safe_open

    from .models import build

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        state = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != "lipcert-export" or "model_spec" not in meta:
        raise ExportError(f"{path} was not exported by lipcert (no model_spec in its metadata)")
    spec = json.loads(meta["model_spec"])
    model = build(spec["name"], **spec.get("kwargs", {}))
    bad = checkpoint.non_finite(state)
    if bad:
        raise ExportError(f"{path}: non-finite weights in {', '.join(bad[:8])}")
    model.load_state_dict(state, strict=True)
    if current_p(model) is not None:
        set_p(model, math.inf)  # exported models are at p = inf (the spec may hold the training start p)
    model.eval()
    if verify and meta.get("content_hash") != "sha256:" + model_hash(model):
        raise checkpoint.CheckpointCorruptError(f"{path} is corrupted: its tensors do not match the content hash stored "
                                                "at export; re-export it, or pass verify=False to load it anyway")
    return model


__all__ = ["FORMATS", "ExportError", "export_checkpoint", "export_metadata", "export_model", "load_safetensors",
           "model_hash", "plain_lp_dist", "plain_torch_distances", "read_metadata"]
