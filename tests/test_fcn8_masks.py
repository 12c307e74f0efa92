"""FCN8VGG16's dropout masks drawn in place (covidlib.models.fcn8 draw_masks / _dropout_mask_):
exactly the numbers nn.Dropout draws, with and without a seed, on one or two torch threads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from covidlib.models import FCN8VGG16
from covidlib.models.fcn8 import _dropout_mask_
from covidlib.models.mc_dropout import enable_mc_dropout


@pytest.fixture
def model_feats():
    torch.manual_seed(0)
    model = FCN8VGG16(2, fc_channels=16, layout="same")
    for conv in (model.score_fr, model.score_pool4, model.score_pool3):
        nn.init.normal_(conv.weight)
    with torch.no_grad():
        feats = model.backbone_features(torch.randn(2, 3, 64, 64))
    return model, feats


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("training", [True, False])
def test_a_mask_is_what_the_layer_makes_of_ones(p, training):
    layer = nn.Dropout(p).train(training)
    torch.manual_seed(7)
    expected = layer(torch.ones(3, 5, 4))
    after_layer = torch.rand(2)
    torch.manual_seed(7)
    got = _dropout_mask_(layer, torch.empty(3, 5, 4))
    assert torch.equal(got, expected) and torch.equal(torch.rand(2), after_layer)
    gen = torch.Generator().manual_seed(7)  # its own generator: the same numbers
    assert torch.equal(_dropout_mask_(layer, torch.empty(3, 5, 4), gen), expected)


@pytest.mark.parametrize("threads", [1, 2])
def test_seeded_samples_equal_seeded_head_calls_exactly(model_feats, threads):
    model, feats = model_feats
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad(), enable_mc_dropout(model):
            torch.manual_seed(11)
            batched = model.head_samples(feats, 5, seed=3, max_batch=4)  # chunks of 2 samples
            untouched = torch.rand(3)  # a seeded run leaves the global generator alone
            one_by_one = []
            for i in range(5):
                torch.manual_seed(3 + i)
                one_by_one.append(model.head(feats))
        torch.manual_seed(11)
        assert torch.equal(torch.rand(3), untouched)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(batched, torch.stack(one_by_one))


def test_unseeded_samples_draw_from_the_global_generator_in_head_order(model_feats):
    model, feats = model_feats
    with torch.no_grad(), enable_mc_dropout(model):
        torch.manual_seed(5)
        batched = model.head_samples(feats, 3)
        after_batched = torch.rand(3)
        torch.manual_seed(5)
        one_by_one = torch.stack([model.head(feats) for _ in range(3)])
        after_heads = torch.rand(3)
    assert torch.equal(batched, one_by_one) and torch.equal(after_batched, after_heads)
