import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import losses as L


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_contrastive_hand_computed_and_weights():
    q = unit([1, 0], [1, 0], [1, 0])
    p = unit([0, 1], [0.8, 0.6], [0, 1])  # cos 0, 0.8, 0  -> d = 1, 0.2, 1
    y = torch.tensor([1, 0, 0])
    per = [0.5 * 1.0, 0.5 * (0.5 - 0.2) ** 2, 0.0]  # positive far, negative inside margin, negative past it
    loss = L.WeightedContrastiveLoss(margin=0.5).pair_loss(q, p, y)
    assert loss.item() == pytest.approx(sum(per) / 3, rel=1e-5)
    w = torch.tensor([2.0, 1.0, 1.0])
    loss_w = L.WeightedContrastiveLoss(margin=0.5).pair_loss(q, p, y, w)
    assert loss_w.item() == pytest.approx((2 * per[0] + per[1]) / 4, rel=1e-5)


def test_triplet_hand_computed_and_padding_mask():
    a = unit([1, 0])
    pos = unit([0.6, 0.8])  # d_pos = 0.4
    negs = torch.stack([unit([0.8, 0.6])[0], unit([0, 1])[0]]).unsqueeze(0)  # d_neg = 0.2, 1.0
    loss = L.TripletLoss(margin=0.2)(a, pos, negs)
    assert loss.item() == pytest.approx((0.4 - 0.2 + 0.2 + 0.0) / 2, rel=1e-5)
    masked = L.TripletLoss(margin=0.2)(a, pos, negs, negative_valid=torch.tensor([[True, False]]))
    assert masked.item() == pytest.approx(0.4, rel=1e-5)
    assert L.TripletLoss(0.2)(a, pos, negs[:, 0]).item() == pytest.approx(0.4, rel=1e-5)


def test_infonce_hand_computed():
    q = unit([1, 0], [0, 1])
    p = unit([1, 0], [0.6, 0.8])
    loss_fn = L.InBatchNegativesLoss(temperature=0.5)
    assert loss_fn.scale == 2.0
    s = 2.0 * (q @ p.T)
    expect = (-(s[0, 0] - torch.logsumexp(s[0], 0)) - (s[1, 1] - torch.logsumexp(s[1], 0))) / 2
    assert loss_fn(q, p).item() == pytest.approx(expect.item(), rel=1e-6)
    # explicit negatives become extra columns for every row
    n = unit([0, 1], [1, 0]).unsqueeze(1)  # (2, 1, 2)
    s2 = 2.0 * (q @ torch.cat([p, n[:, 0]]).T)
    expect2 = (-(s2[0, 0] - torch.logsumexp(s2[0], 0)) - (s2[1, 1] - torch.logsumexp(s2[1], 0))) / 2
    assert loss_fn(q, p, n).item() == pytest.approx(expect2.item(), rel=1e-6)


def test_masking_removes_exactly_the_masked_logits():
    torch.manual_seed(0)
    q, p = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 2] = True
    mask[1, 1] = True  # the diagonal is never masked
    fn = L.InBatchNegativesLoss(0.1)
    logits = fn.logits(q, p, mask=mask)
    assert logits[0, 2].item() < -1e3 and logits[1, 1].item() > -1e3
    s = 10.0 * (q @ p.T)
    row0 = -(s[0, 0] - torch.logsumexp(s[0, [0, 1, 3]], 0))
    rest = [-(s[i, i] - torch.logsumexp(s[i], 0)) for i in (1, 2, 3)]
    assert fn(q, p, mask=mask).item() == pytest.approx(((row0 + sum(rest)) / 4).item(), rel=1e-5)
    # masking a relevant candidate can only lower that row's loss
    assert fn(q, p, mask=mask).item() <= fn(q, p).item() + 1e-6


def test_infonce_weights_and_logq():
    torch.manual_seed(1)
    q, p = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    fn = L.InBatchNegativesLoss(0.05)
    s = 20.0 * (q @ p.T)
    per = torch.stack([-(s[i, i] - torch.logsumexp(s[i], 0)) for i in range(3)])
    w = torch.tensor([1.0, 0.5, 0.0])
    assert fn(q, p, weights=w).item() == pytest.approx(((per * w).sum() / w.sum()).item(), rel=1e-5)
    log_q = torch.tensor([math.log(0.5), math.log(0.25), math.log(0.25)])
    sc = s - log_q
    per_c = torch.stack([-(sc[i, i] - torch.logsumexp(sc[i], 0)) for i in range(3)])
    assert fn(q, p, log_q=log_q).item() == pytest.approx(per_c.mean().item(), rel=1e-5)
    # a uniform correction changes nothing
    assert fn(q, p, log_q=torch.full((3,), -2.0)).item() == pytest.approx(per.mean().item(), rel=1e-5)


def test_combined_is_infonce_plus_weighted_contrastive():
    torch.manual_seed(2)
    q, p = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    n = F.normalize(torch.randn(3, 2, 8), dim=-1)
    valid = torch.tensor([[True, True], [True, False], [True, True]])
    w = torch.tensor([1.0, 0.9, 0.6])
    comb = L.CombinedLoss(0.05, 0.5, contrastive_weight=0.3)(q, p, n, w, negative_valid=valid)
    nce = L.InBatchNegativesLoss(0.05)(q, p, n, w, negative_valid=valid)
    # the padding slot (row 1, slot 1) is no candidate for any row
    logits = L.InBatchNegativesLoss(0.05).logits(q, p, n, negative_valid=valid)
    assert (logits[:, 3 + 3] < -1e3).all() and (logits[:, 3 + 2] > -1e3).all()
    keep = valid.reshape(-1)
    cq = torch.cat([q, q.repeat_interleave(2, 0)[keep]])
    cp = torch.cat([p, n.reshape(6, 8)[keep]])
    cy = torch.cat([torch.ones(3), torch.zeros(int(keep.sum()))])
    cw = torch.cat([w, torch.ones(int(keep.sum()))])
    con = L.WeightedContrastiveLoss(0.5).pair_loss(cq, cp, cy, cw)
    assert comb.item() == pytest.approx((nce + 0.3 * con).item(), rel=1e-5)
    assert L.CombinedLoss(contrastive_weight=0)(q, p, n, w, negative_valid=valid).item() == pytest.approx(
        nce.item(), rel=1e-6)


def test_accidental_hit_mask():
    # rows: query 10 -> product 1, query 11 -> product 1 (same product), query 12 -> product 3
    cands = [1, 1, 3, 4, -1]  # in-batch positives + one hard negative (4) + a padding slot
    m = L.accidental_hit_mask([10, 11, 12], [1, 1, 3], cands, {12: {4, 3}, 10: {1}})
    expect = torch.tensor([[1, 1, 0, 0, 1],
                           [1, 1, 0, 0, 1],
                           [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expect)


def test_log_sampling_probabilities():
    lq = L.log_sampling_probabilities(np.array([5, 5, 5, 7]), smoothing=0)
    assert lq[5] == pytest.approx(math.log(0.75)) and lq[7] == pytest.approx(math.log(0.25))


@pytest.mark.parametrize("sharing", ["shared", "separate"])
def test_gradients_reach_the_right_towers(tiny_encoder_dir, sharing):
    from two_tower_model import TwoTowerModel
    m = TwoTowerModel.from_pretrained(str(tiny_encoder_dir), tower_sharing=sharing)
    qb = m.tokenize(["red shoes", "aa batteries 24 pack"], "query")
    pb = m.tokenize(["Nike Running Shoes, Red", "Duracell AA Batteries (24 Count)"], "product")
    loss = L.CombinedLoss()(m.embed(qb, "query"), m.embed(pb, "product"))
    loss.backward()
    qg = m.query_tower.encoder.embeddings.word_embeddings.weight.grad
    pg = m.product_tower.encoder.embeddings.word_embeddings.weight.grad
    assert qg is not None and qg.abs().sum() > 0 and pg is not None and pg.abs().sum() > 0
    if sharing == "shared":
        assert m.query_tower.encoder is m.product_tower.encoder
    else:
        assert m.query_tower.encoder is not m.product_tower.encoder
        m.zero_grad()
        # a loss on query embeddings only must leave the product tower untouched
        m.embed(qb, "query").sum().backward()
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.product_tower.parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.query_tower.parameters())


def _batch(b=3, k=2, d=8, seed=3):
    torch.manual_seed(seed)
    q, p = F.normalize(torch.randn(b, d), dim=-1), F.normalize(torch.randn(b, d), dim=-1)
    n = F.normalize(torch.randn(b, k, d), dim=-1)
    return q, p, n


@pytest.mark.parametrize("name", sorted(L.LOSSES))
def test_every_loss_takes_the_one_signature(name):
    """Every loss is called the same way (the trainer's one call) and ignores padding slots."""
    q, p, n = _batch()
    w = torch.tensor([1.0, 0.9, 0.6])
    valid = torch.tensor([[True, False], [True, True], [False, False]])
    mask = torch.zeros(3, 3 + 6, dtype=torch.bool)
    log_q = torch.zeros(9)
    fn = L.build_loss(name, temperature=0.05, margin=0.3, contrastive_weight=0.5)
    out = fn(q, p, n, w, mask=mask, log_q=log_q, negative_valid=valid)
    assert out.dim() == 0 and torch.isfinite(out)
    # whatever a padding slot holds does not change the loss
    n2 = n.clone()
    n2[0, 1] = -q[0]
    n2[2] = -q[2]
    assert fn(q, p, n2, w, mask=mask, log_q=log_q, negative_valid=valid).item() == pytest.approx(out.item(), rel=1e-5)


def test_contrastive_forward_is_the_pair_view_and_triplet_needs_negatives():
    q, p, n = _batch()
    valid = torch.tensor([[True, False], [True, True], [False, True]])
    fn = L.WeightedContrastiveLoss(0.5)
    cq, cp, cy, cw = L.contrastive_pairs(q, p, n, None, valid)
    assert cq.shape == (3 + 4, 8) and cy.tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert fn(q, p, n, negative_valid=valid).item() == pytest.approx(fn.pair_loss(cq, cp, cy, cw).item(), rel=1e-6)
    with pytest.raises(ValueError, match="negatives"):
        L.TripletLoss()(q, p)
    with pytest.raises(ValueError, match="unknown loss"):
        L.build_loss("nope")


def test_build_loss_passes_the_settings():
    assert L.build_loss("infonce", temperature=0.1).scale == pytest.approx(10.0)
    c = L.build_loss("combined", temperature=0.02, margin=0.4, contrastive_weight=0.7)
    assert c.in_batch.scale == pytest.approx(50.0) and c.contrastive.margin == 0.4 and c.contrastive_weight == 0.7
    assert L.build_loss("triplet", margin=0.3).margin == 0.3
    assert L.build_loss("contrastive", margin=0.6).margin == 0.6


def test_symmetric_infonce_hand_computed_with_transposed_mask():
    torch.manual_seed(1)
    q, p = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    n = F.normalize(torch.randn(3, 1, 8), dim=-1)
    w = torch.tensor([1.0, 0.5, 1.0])
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 2] = True  # product 2 is judged relevant for query 0: not a negative either way
    fn = L.InBatchNegativesLoss(0.1, symmetric=True)
    fwd = F.cross_entropy(fn.logits(q, p, n, mask), torch.arange(3), reduction="none")
    s = 10.0 * (p @ q.T)  # product j against every query; query 0 is masked for product 2
    bwd = torch.stack([-(s[0, 0] - torch.logsumexp(s[0], 0)), -(s[1, 1] - torch.logsumexp(s[1], 0)),
                       -(s[2, 2] - torch.logsumexp(s[2, [1, 2]], 0))])
    expect = ((0.5 * (fwd + bwd)) * w).sum() / w.sum()
    assert fn(q, p, n, weights=w, mask=mask).item() == pytest.approx(expect.item(), rel=1e-5)
    # off, the loss is the query -> product direction alone
    plain = L.InBatchNegativesLoss(0.1)(q, p, n, weights=w, mask=mask)
    assert plain.item() == pytest.approx(((fwd * w).sum() / w.sum()).item(), rel=1e-5)
    assert L.build_loss("combined", symmetric=True).in_batch.symmetric
    assert L.build_loss("infonce", symmetric=True).symmetric


def test_lexical_distill_hand_computed_masked_and_pulls_toward_the_lexical_match():
    q = unit([1, 0], [0, 1])
    p = unit([1, 0], [0.6, 0.8])
    n = unit([0.8, 0.6], [1, 0]).unsqueeze(1)  # (2, 1, 2): candidates p0, p1, n0, n1
    lex = torch.tensor([[1.0, 0.0, 4.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    fn = L.LexicalDistillLoss(temperature=0.5, beta=3.0)
    s = 2.0 * (q @ torch.cat([p, n[:, 0]]).T)  # (2, 4)
    expect = 0.0
    for i in range(2):
        t = F.softmax(s[i] + 3.0 * lex[i] / lex[i].max(), 0)
        expect += float((t * (t.log() - F.log_softmax(s[i], 0))).sum()) / 2
    assert fn(q, p, n, lex).item() == pytest.approx(expect, rel=1e-5)
    assert L.LexicalDistillLoss(0.5, beta=0.0)(q, p, n, lex).item() == pytest.approx(0.0, abs=1e-7)
    assert fn(q, p, n, torch.zeros(2, 4)).item() == pytest.approx(0.0, abs=1e-7)  # no term matches
    # a masked candidate is in neither distribution: masking row 0's lexical match n0 changes the loss
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 2] = True
    t0 = F.softmax(s[0, [0, 1, 3]] + 3.0 * lex[0, [0, 1, 3]] / 4.0, 0)
    kl0 = float((t0 * (t0.log() - F.log_softmax(s[0, [0, 1, 3]], 0))).sum())
    t1 = F.softmax(s[1] + 3.0 * lex[1] / 2.0, 0)
    kl1 = float((t1 * (t1.log() - F.log_softmax(s[1], 0))).sum())
    assert fn(q, p, n, lex, mask=mask).item() == pytest.approx((kl0 + kl1) / 2, rel=1e-5)
    # the gradient moves row 0's query toward its lexical match n0 (cosine with n0 rises after a step)
    qv = q.clone().requires_grad_(True)
    fn(qv, p, n, lex).backward()
    q_new = F.normalize(qv.detach() - 0.1 * qv.grad, dim=-1)
    assert float(q_new[0] @ n[0, 0]) > float(q[0] @ n[0, 0])
