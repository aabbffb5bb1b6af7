"""lipcert/data/registry.py: the dataset table, name/split handling, in-process cache."""

import dataclasses

import pytest
import torch

from lipcert import data

ALL = ["digits", "mnist5k", "mnist", "fashion-mnist", "cifar10", "cifar100", "tinyimagenet", "synthetic"]


def test_available():
    assert sorted(data.available()) == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_info_is_consistent(name):
    inf = data.info(name)
    c = inf.in_shape[0]
    assert inf.name == name and len(inf.in_shape) == 3
    assert len(inf.mean) == c and len(inf.std_per_channel) == c
    assert all(0 < m < 1 for m in inf.mean) and 0 < inf.std < 1 and all(0 < s < 1 for s in inf.std_per_channel)
    assert inf.train_size > inf.test_size > 0 and inf.num_classes >= 10 and inf.layout
    with pytest.raises(dataclasses.FrozenInstanceError):
        inf.std = 1.0


def test_paper_constants():
    """Scalar stds of the l-inf-dist authors; padding/flip of Zhang22 Appendix B."""
    assert {n: data.info(n).std for n in ["mnist", "fashion-mnist", "cifar10", "tinyimagenet"]} == {
        "mnist": 0.3081, "fashion-mnist": 0.3520, "cifar10": 0.2009, "tinyimagenet": 0.2276}
    for n in ["mnist", "mnist5k", "fashion-mnist"]:
        assert (data.info(n).default_padding, data.info(n).default_hflip) == (1, False)
    for n in ["cifar10", "cifar100"]:
        assert (data.info(n).default_padding, data.info(n).default_hflip) == (3, True)
    assert (data.info("tinyimagenet").default_padding, data.info("tinyimagenet").default_hflip) == (4, True)
    assert [data.info(n).num_classes for n in ["cifar100", "tinyimagenet"]] == [100, 200]
    assert [n for n in ALL if data.info(n).embedded] == ["digits", "mnist5k", "synthetic"]


def test_aliases_and_unknown_names():
    assert data.info("Fashion_MNIST").name == "fashion-mnist"
    assert data.info("tiny-imagenet-200").name == "tinyimagenet"
    with pytest.raises(data.DataError, match="unknown dataset 'svhn'; available: digits, mnist5k"):
        data.info("svhn")
    with pytest.raises(data.DataError, match="unknown split 'val'.*'train' or 'test'"):
        data.load("digits", "val")


def test_returned_tensors_do_not_alias_the_cache():
    x, y = data.load("digits", "test")
    x0, y0 = x.clone(), y.clone()
    x.zero_()
    y.fill_(3)
    x2, y2 = data.load("digits", "test")
    assert torch.equal(x2, x0) and torch.equal(y2, y0)


def test_embedded_ignores_data_dir(tmp_path):
    assert torch.equal(data.load("synthetic", "test", tmp_path / "nowhere")[0], data.load("synthetic", "test")[0])


def test_data_error_is_a_value_error():
    assert issubclass(data.DataError, ValueError)


def test_channel_stats():
    x = torch.stack([torch.zeros(2, 2), torch.ones(2, 2), torch.full((2, 2), 0.5)]).unsqueeze(0).repeat(2, 1, 1, 1)
    x[1, 2] = 1.0
    mean, std = data.channel_stats(x)
    assert mean == pytest.approx((0.0, 1.0, 0.75)) and std == pytest.approx((0.0, 0.0, 0.25))
