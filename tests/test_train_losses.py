"""Losses, QAT and SLERP on hand-made inputs: each checked against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pplx_embed.model.quantization import to_int8, to_pm1
from pplx_embed.train.losses import contextual_dual_loss, cosine_scores, false_negative_mask, info_nce, mrl_qat_loss
from pplx_embed.train.merge import slerp, slerp_state_dicts
from pplx_embed.train.quant import fake_quantize, ste_binary, ste_int8


def test_false_negative_mask_flags_exactly_the_negatives_above_the_positive_plus_margin():
    scores = torch.tensor([[0.50, 0.70, 0.55, 0.10],
                           [0.90, 0.20, 0.25, 0.31],
                           [0.10, 0.20, 0.80, 0.95]])
    positives = torch.tensor([0, 1, 2])
    mask = false_negative_mask(scores, positives, margin=0.1)
    expected = torch.tensor([[False, True, False, False],    # 0.70 > 0.60; 0.55 is not
                             [True, False, False, True],     # 0.90 and 0.31 > 0.30; 0.25 is not
                             [False, False, False, True]])   # 0.95 > 0.90
    assert torch.equal(mask, expected)
    assert not false_negative_mask(scores, positives, margin=None).any()


def test_false_negative_mask_flags_near_duplicates_of_the_positive():
    scores = torch.zeros(2, 3)
    candidate_sim = torch.tensor([[1.0, 0.99, 0.5], [0.99, 1.0, 0.97]])
    mask = false_negative_mask(scores, torch.tensor([0, 1]), None, candidate_sim, duplicate_threshold=0.98)
    assert torch.equal(mask, torch.tensor([[False, True, False], [True, False, False]]))


def test_info_nce_matches_hand_computed_cross_entropy_and_masking_removes_the_flagged_terms():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, -1.0]])  # candidates: 2 positives + 1 extra negative
    t = 0.5
    s = cosine_scores(q, d)
    assert torch.allclose(s, torch.tensor([[1.0, 0.6, 0.0], [0.0, 0.8, -1.0]]))
    by_hand = -0.5 * (math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2) + 1.0))
                      + math.log(math.exp(1.6) / (1.0 + math.exp(1.6) + math.exp(-2.0))))
    assert info_nce(q, d, temperature=t).item() == pytest.approx(by_hand, rel=1e-5)
    exclude = torch.tensor([[False, True, False], [False, False, False]])  # drop candidate 1 for query 0
    masked = -0.5 * (math.log(math.exp(2.0) / (math.exp(2.0) + 1.0))
                     + math.log(math.exp(1.6) / (1.0 + math.exp(1.6) + math.exp(-2.0))))
    assert info_nce(q, d, temperature=t, exclude=exclude).item() == pytest.approx(masked, rel=1e-5)


def test_ste_int8_forward_is_the_runtime_int8_and_gradient_is_the_tanh_derivative():
    x = torch.tensor([-3.0, -0.4, 0.0, 0.0123, 0.7, 5.0], requires_grad=True)
    y = ste_int8(x)
    assert np.array_equal(y.detach().numpy().astype(np.int8), to_int8(x.detach().numpy()))
    y.sum().backward()
    assert torch.allclose(x.grad, 127.0 * (1 - torch.tanh(x.detach()) ** 2), rtol=1e-4)
    assert (x.grad[1:5] > 0).all()  # rounding alone would give zero gradient


def test_ste_binary_forward_is_the_runtime_sign_and_passes_gradients():
    x = torch.tensor([-2.0, -0.1, 0.0, 0.3], requires_grad=True)
    y = ste_binary(x)
    assert np.array_equal(y.detach().numpy().astype(np.int8), to_pm1(x.detach().numpy()))
    y.sum().backward()
    assert torch.allclose(x.grad, 1 - torch.tanh(x.detach()) ** 2)
    with pytest.raises(ValueError, match="unknown training quantization"):
        fake_quantize(x, "int4")


def test_mrl_qat_loss_is_the_mean_of_each_view_loss_truncated_before_quantizing():
    torch.manual_seed(0)
    q, d = torch.randn(4, 8), torch.randn(4, 8)
    total, views = mrl_qat_loss(lambda a, b: info_nce(a, b, temperature=0.1), q, d, (2, 4, None), ("float", "int8"))
    assert list(views) == ["float@2", "int8@2", "float@4", "int8@4", "float@full", "int8@full"]
    for dim in (2, 4, 8):
        assert views[f"float@{dim if dim < 8 else 'full'}"] == pytest.approx(
            info_nce(q[:, :dim], d[:, :dim], temperature=0.1).item(), rel=1e-6)
        quantized = info_nce(ste_int8(q[:, :dim]), ste_int8(d[:, :dim]), temperature=0.1).item()
        assert views[f"int8@{dim if dim < 8 else 'full'}"] == pytest.approx(quantized, rel=1e-6)
    assert total.item() == pytest.approx(sum(views.values()) / 6, rel=1e-6)
    # a loss on dims 0-1 only: gradients reach exactly those coordinates
    qq = q.clone().requires_grad_()
    mrl_qat_loss(lambda a, b: info_nce(a, b), qq, d, (2,), ("float",))[0].backward()
    assert qq.grad[:, 2:].abs().sum() == 0 and qq.grad[:, :2].abs().sum() > 0


def test_contextual_dual_loss_combines_in_batch_in_sequence_and_document_terms():
    torch.manual_seed(1)
    chunks = torch.randn(5, 6)
    chunk_doc = torch.tensor([0, 0, 0, 1, 1])
    queries = torch.randn(2, 6)
    positives = torch.tensor([1, 3])
    t = 0.2
    total, parts = contextual_dual_loss(queries, chunks, chunk_doc, positives, t)
    s = cosine_scores(queries, chunks) / t
    assert parts["in_batch"] == pytest.approx(F.cross_entropy(s, positives).item(), rel=1e-6)
    in_seq = (-F.log_softmax(s[0, :3], 0)[1] - F.log_softmax(s[1, 3:], 0)[0]) / 2
    assert parts["in_sequence"] == pytest.approx(in_seq.item(), rel=1e-6)
    docs = torch.stack([chunks[:3].mean(0), chunks[3:].mean(0)])
    assert parts["document"] == pytest.approx(F.cross_entropy(cosine_scores(queries, docs) / t,
                                                              torch.tensor([0, 1])).item(), rel=1e-6)
    assert total.item() == pytest.approx(sum(parts.values()), rel=1e-6)


def test_slerp_endpoints_identity_and_angle():
    torch.manual_seed(0)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    assert torch.allclose(slerp(a, a, 0.37), a, atol=1e-6)
    # orthogonal unit vectors: the midpoint stays on the unit circle at 45 degrees
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(slerp(x, y, 0.5), torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)
    assert torch.equal(slerp(torch.tensor([1, 2]), torch.tensor([3, 4]), 0.5), torch.tensor([1, 2]))  # int buffers kept
    with pytest.raises(ValueError, match="shapes"):
        slerp(a, torch.randn(4, 3), 0.5)
    with pytest.raises(ValueError, match="different parameters"):
        slerp_state_dicts({"w": a}, {"v": a}, 0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        slerp_state_dicts({"w": a}, {"w": b}, 1.5)
