"""Your own data and your own model from the command line, with no code written by the user:
a folder of PNGs is refused while it mixes sizes (the file named), then trained on (l-inf MLP,
l2 CNN), certified and reported; a plain torch CNN in a user file is certified in l2 from its
safetensors weights, and PGD at 0.999 x each radius breaks nothing."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from lipcert.attacks import pgd
from lipcert.cli import main
from tests.conftest import bands

TINY = ["--set", "train.epochs=2", "--set", "train.batch_size=16", "--set", "eval.attack.steps=2", "--no-progress",
        "--device", "cpu"]


def write_pngs(root, sizes=((12, 12),)):
    """3 classes x 15 images; class c bright in its own band of rows; the first file of class 'b' gets
    the last size (so two sizes = one odd file)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate("abc"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(15):
            w, h = sizes[-1] if (name == "b" and i == 0) else sizes[0]
            a = rng.integers(0, 50, (h, w), dtype=np.uint8)
            a[4 * c : 4 * c + 3] = 230
            Image.fromarray(a, "L").save(root / name / f"{i:02d}.png")
    return root


def test_own_image_folder_train_certify_report(tmp_path, capsys):
    root = write_pngs(tmp_path / "pngs", sizes=((12, 12), (10, 12)))
    out = tmp_path / "mlp"
    assert main(["train", "--preset", "custom-linf-mlp", "--data", f"imagefolder:{root}", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert "mixed image sizes" in err and str(root / "b" / "00.png") in err and str(root / "a" / "00.png") in err
    write_pngs(root)  # rewrite the odd file at the common size: accepted now
    assert main(["train", "--preset", "custom-linf-mlp", "--data", f"imagefolder:{root}", "--out", str(out),
                 "--set", "model.width=32", *TINY]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["n"] == 9 and res["norm"] == "linf"  # 3 of 15 per class held out (seeded fraction split)
    cfg = (out / "config.yaml").read_text()
    assert "- a\n  - b\n  - c" in cfg and str(root) in cfg  # the class numbering and the folder are recorded
    l2 = tmp_path / "l2"  # the same data named in a recipe's data section
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"base: custom-l2-cnn\ndata: {{name: imagefolder, data_dir: '{root}'}}\ntrain: {{epochs: 1}}\n")
    assert main(["train", "--preset", str(recipe), "--out", str(l2), *TINY[2:]]) == 0
    for run, eps in ((out, "0.02"), (l2, "0.25")):
        js = tmp_path / f"{run.name}.json"
        assert main(["certify", str(run / "model.pt"), "--eps", eps, "--json", str(js)]) == 0
        got = json.loads(js.read_text())
        assert got["dataset"] == "imagefolder" and got["n"] == 9
        train_res = json.loads((run / "results.json").read_text())
        assert got["eps"][eps]["certified_accuracy"] == pytest.approx(train_res["eps"][eps]["certified_accuracy"])
        assert main(["report", str(run)]) == 0 and (run / "report.md").is_file()
    # the model's normalisation holds the training split's per-channel statistics
    state = torch.load(l2 / "model.pt", weights_only=True)
    spec = state["model_spec"]["kwargs"]
    assert len(spec["mean"]) == 1 and isinstance(spec["std"], list) and 0 < spec["std"][0] < 0.5


MYNET = '''
from torch import nn
from lipcert.nn import InputNormalize


def make_net():
    return nn.Sequential(
        InputNormalize([0.3], [0.35]),
        nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 3),
    )
'''


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    """A user file with a plain torch CNN, trained a few steps here and saved as safetensors / a state dict."""
    from safetensors.torch import save_file

    from lipcert.cli.own_model import load_factory

    tmp = tmp_path_factory.mktemp("own")
    (tmp / "mynet.py").write_text(MYNET)
    torch.manual_seed(0)
    model = load_factory(f"{tmp / 'mynet.py'}:make_net")()
    x, y = bands(96, 0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    save_file(model.state_dict(), str(tmp / "net.safetensors"))
    torch.save(model.state_dict(), tmp / "net.pt")
    xt, yt = bands(24, 9)
    u8 = lambda t: (t.numpy() * 255).round().astype(np.uint8)  # noqa: E731
    np.savez(tmp / "test.npz", x=u8(x), y=y.numpy(), x_test=u8(xt), y_test=yt.numpy())
    return tmp, model.eval()


def test_own_model_certified_in_l2_from_the_cli(own_model, tmp_path):
    tmp, model = own_model
    js, radii = tmp_path / "r.json", tmp_path / "radii.csv"
    args = ["certify", "--model-factory", f"{tmp / 'mynet.py'}:make_net", "--weights", str(tmp / "net.safetensors"),
            "--data", f"arrays:{tmp / 'test.npz'}", "--eps", "0.25", "0.5", "--norm", "l2", "--bound", "best",
            "--attack", "pgd", "--steps", "10", "--json", str(js), "--radii", str(radii)]
    assert main(args) == 0
    res = json.loads(js.read_text())
    assert res["norm"] == "l2" and res["n"] == 24
    assert res["eps"]["0.25"]["certified_accuracy"] >= 0.8
    assert all(row.get("soundness_violations", 0) == 0 for row in res["eps"].values())
    rows = list(csv.DictReader(radii.open()))
    r = torch.tensor([float(row["radius"]) for row in rows])
    assert float((r > 0).float().mean()) >= 0.8
    # the radii hold: PGD l2 at 0.999 x each radius changes no certified prediction (on the data as certified)
    x = torch.from_numpy(np.load(tmp / "test.npz")["x_test"]).float() / 255
    y = torch.from_numpy(np.load(tmp / "test.npz")["y_test"])
    for i in torch.nonzero(r > 0).flatten().tolist():
        att = pgd(model, x[i : i + 1], y[i : i + 1], 0.999 * float(r[i]), norm="l2", steps=30, restarts=2, seed=i)
        assert bool(att.robust.all()), i
    # a state dict saved with torch.save, and the module form MODULE:FUNCTION, give the same radii
    radii2 = tmp_path / "radii2.csv"
    import sys

    sys.path.insert(0, str(tmp))
    try:
        assert main([*args[:1], "--model-factory", "mynet:make_net", "--weights", str(tmp / "net.pt"), *args[5:-2],
                     "--radii", str(radii2)]) == 0
    finally:
        sys.path.remove(str(tmp))
    assert [row["radius"] for row in csv.DictReader(radii2.open())] == [row["radius"] for row in rows]


def test_own_model_errors(own_model, tmp_path, capsys):
    tmp, _ = own_model
    base = ["certify", "--eps", "0.1", "--data", f"arrays:{tmp / 'test.npz'}"]
    (tmp_path / "bn.py").write_text("from torch import nn\ndef make():\n    return nn.Sequential(nn.Conv2d(1, 2, 3), "
                                    "nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3))\n")
    cases = [
        ([*base, "--model-factory", f"{tmp_path / 'bn.py'}:make"], "layer 1 (nn.BatchNorm2d) is not supported"),
        ([*base, "--model-factory", f"{tmp / 'mynet.py'}:nothing"], "has no function 'nothing'"),
        ([*base, "--model-factory", "no_such_module_xyz:make"], "cannot import module"),
        ([*base, "--weights", str(tmp / "net.pt")], "--weights needs --model-factory"),
        (["certify", "--eps", "0.1", "--model-factory", f"{tmp / 'mynet.py'}:make_net"], "needs the data"),
        ([*base, "--model-factory", f"{tmp / 'mynet.py'}:make_net", "--norm", "linf"], "certified in l2"),
        ([*base, "--model-factory", f"{tmp_path / 'bn.py'}:make", "--weights", str(tmp / "net.safetensors")],
         "do not fit the model"),
        (["certify", "--eps", "0.1"], "give a checkpoint"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, (argv, message)
    # a pickle with code in it is refused by the weights-only reader
    torch.save({"w": torch.zeros(1), "evil": object()}, tmp_path / "evil.pt")
    assert main([*base, "--model-factory", f"{tmp / 'mynet.py'}:make_net", "--weights", str(tmp_path / "evil.pt")]) == 2
    assert "weights_only" in capsys.readouterr().err
