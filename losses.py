"""Loss functions for the two-tower model (phase 3), in the style of sentence-transformers' losses.

Every loss has one call signature, so the trainer calls whichever is configured the same way:

    loss = loss_fn(query_emb, positive_emb, negative_emb=None, weights=None, mask=None,
                   log_q=None, negative_valid=None)

    query_emb (b, d), positive_emb (b, d)   L2-normalised; row i's positive is positive_emb[i]
    negative_emb (b, k, d) optional         k explicit (hard/labelled/random) negatives per row
    weights (b,) optional                   per-row weights (ESCI relevance: E 1.0, S 0.9, C 0.6)
    mask (b, b + b*k) optional bool         True where an in-batch candidate must not be a negative
                                            for the row (see `accidental_hit_mask`)
    log_q (b + b*k,) optional               log sampling probability of each candidate (logQ)
    negative_valid (b, k) optional bool     False for padding negative slots

Inputs a loss does not use (e.g. `mask` in the triplet loss) are accepted and ignored, as
documented per class. Every loss returns a scalar: the weighted mean over rows (or pairs),
sum(w_i * loss_i) / sum(w_i).

    WeightedContrastiveLoss  pairs (query, product, label): positives pulled in, negatives pushed past a margin
    TripletLoss              (anchor, positive, negative[s]) with a margin
    InBatchNegativesLoss     InfoNCE over in-batch positives + explicit negatives, with
                             accidental-hit masking and optional logQ correction
    CombinedLoss             InBatchNegativesLoss + contrastive_weight * WeightedContrastiveLoss
    LexicalDistillLoss       KL to the student's own softmax re-ranked by BM25 (--lexical-distill);
                             added to any of the above, with the candidates' BM25 scores as input

`build_loss(name, ...)` makes one from the CLI settings. Helpers: `accidental_hit_mask` builds the
mask of candidates that must not count as negatives, `log_sampling_probabilities` estimates logQ
terms from training-pair frequencies.

Example (CPU, runs in a second):
    python -c "import torch, losses; q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1); \
print(losses.InBatchNegativesLoss()(q, q))"
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

NEG_INF = -1e4  # large negative logit; finite so that bf16/fp16 never produce NaNs


def _weighted_mean(per_example: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """sum(w * x) / sum(w); plain mean without weights."""
    if weights is None:
        return per_example.mean()
    w = weights.to(per_example.dtype)
    return (per_example * w).sum() / w.sum().clamp_min(1e-12)


def _valid(negative_emb: torch.Tensor, negative_valid: torch.Tensor | None) -> torch.Tensor:
    """(b, k) bool of real negative slots (all True when no padding mask is given)."""
    b, k = negative_emb.shape[:2]
    if negative_valid is None:
        return torch.ones(b, k, dtype=torch.bool, device=negative_emb.device)
    return negative_valid.to(device=negative_emb.device, dtype=torch.bool)


def contrastive_pairs(query_emb: torch.Tensor, positive_emb: torch.Tensor, negative_emb: torch.Tensor | None,
                      weights: torch.Tensor | None, negative_valid: torch.Tensor | None):
    """(q, p, labels, weights) of the pair view of a batch: each row's positive (label 1, weight
    w_i) and each of its real explicit negatives (label 0, weight 1). Shapes (n, d), (n, d), (n,), (n,)."""
    b, dev = query_emb.shape[0], query_emb.device
    w_pos = weights.to(dev, torch.float32) if weights is not None else torch.ones(b, device=dev)
    if negative_emb is None:
        return query_emb, positive_emb, torch.ones(b, device=dev), w_pos
    k = negative_emb.shape[1]
    keep = _valid(negative_emb, negative_valid).reshape(-1)  # (b*k,)
    q_neg = query_emb.repeat_interleave(k, 0)[keep]  # (m, d)
    p_neg = negative_emb.reshape(b * k, -1)[keep]  # (m, d)
    m = q_neg.shape[0]
    return (torch.cat([query_emb, q_neg]), torch.cat([positive_emb, p_neg]),
            torch.cat([torch.ones(b, device=dev), torch.zeros(m, device=dev)]),
            torch.cat([w_pos, torch.ones(m, device=dev)]))


class WeightedContrastiveLoss(nn.Module):
    """Contrastive loss on cosine distance d = 1 - cos(q, p) (Hadsell, Chopra & LeCun, CVPR 2006;
    the cosine form of sentence-transformers' ContrastiveLoss):

        loss_i = 1/2 * [ y_i * d_i^2 + (1 - y_i) * relu(margin - d_i)^2 ]

    Positives (y = 1) are pulled together; negatives (y = 0) are pushed until their distance is at
    least `margin` (cos <= 1 - margin) and then ignored. The pairs are each row's positive (label 1,
    weight w_i) and each of its real explicit negatives (label 0, weight 1); `mask` and `log_q`
    are not used (no in-batch candidates). `pair_loss(q, p, labels, weights)` scores given pairs.

    Args:
        margin: cosine-distance margin for negatives (default 0.5; 0.2 would stop pushing at cos 0.8).
    Inputs: the common signature (module docstring).
    """

    def __init__(self, margin: float = 0.5):
        super().__init__()
        self.margin = margin

    def pair_loss(self, query_emb: torch.Tensor, product_emb: torch.Tensor, labels: torch.Tensor,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of n explicit pairs: (n, d), (n, d), labels (n,) 1/0, weights (n,)."""
        d = 1.0 - (query_emb * product_emb).sum(-1)  # (n,)
        y = labels.to(d.dtype)
        per = 0.5 * (y * d.pow(2) + (1 - y) * F.relu(self.margin - d).pow(2))  # (n,)
        return _weighted_mean(per, weights)

    def forward(self, query_emb: torch.Tensor, positive_emb: torch.Tensor, negative_emb: torch.Tensor | None = None,
                weights: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                log_q: torch.Tensor | None = None, negative_valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.pair_loss(*contrastive_pairs(query_emb, positive_emb, negative_emb, weights, negative_valid))


class TripletLoss(nn.Module):
    """Triplet loss on cosine distance (Schroff, Kalenichenko & Philbin, FaceNet, CVPR 2015):

        loss_i = mean_k relu( d(a_i, p_i) - d(a_i, n_ik) + margin ),   d = 1 - cos

    averaged over row i's real negative slots (`negative_valid`); a row with no real negative
    contributes 0. `mask` and `log_q` are not used. Needs explicit negatives.

    Args:
        margin: required gap between the negative's and the positive's distance (default 0.2).
    Inputs: the common signature; negative_emb (b, d) is taken as one negative per row.
    """

    needs_negatives = True

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = margin

    def forward(self, query_emb: torch.Tensor, positive_emb: torch.Tensor, negative_emb: torch.Tensor | None = None,
                weights: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                log_q: torch.Tensor | None = None, negative_valid: torch.Tensor | None = None) -> torch.Tensor:
        if negative_emb is None:
            raise ValueError("TripletLoss needs explicit negatives (negative_emb)")
        if negative_emb.dim() == 2:
            negative_emb = negative_emb.unsqueeze(1)  # (b, 1, d)
        d_pos = 1.0 - (query_emb * positive_emb).sum(-1, keepdim=True)  # (b, 1)
        d_neg = 1.0 - torch.einsum("bd,bkd->bk", query_emb, negative_emb)  # (b, k)
        per = F.relu(d_pos - d_neg + self.margin)  # (b, k)
        valid = _valid(negative_emb, negative_valid).to(per.dtype)  # (b, k)
        per = (per * valid).sum(-1) / valid.sum(-1).clamp_min(1)  # (b,)
        return _weighted_mean(per, weights)


class InBatchNegativesLoss(nn.Module):
    """InfoNCE with in-batch negatives (van den Oord et al. 2018; Henderson et al. 2017, the
    MultipleNegativesRankingLoss of sentence-transformers; DPR, Karpukhin et al. 2020), with
    explicit hard negatives, accidental-hit masking and optional logQ correction (Yi et al.,
    "Sampling-bias-corrected neural modeling for large corpus item recommendations", RecSys 2019).

    Row i scores its query against every candidate of the batch: the b in-batch positives
    followed by all b * k explicit negatives. The target is column i (its own positive).

        logits = scale * cos(q, candidates) - log_q        scale = 1 / temperature
        loss_i = cross_entropy(logits_i, i)

    Accidental hits: a candidate that is the same product as row i's positive, or a product judged
    E/S/C for row i's query, is not a negative for row i; it is masked out of row i's softmax (its
    logit set to a large negative number). The diagonal is never masked. ESCI queries have many
    positives: unmasked, they would teach the model to push relevant products away. Padding
    negative slots (`negative_valid` False) are masked for every row.

    Symmetric (`symmetric=True`, the MultipleNegativesSymmetricRankingLoss of sentence-transformers;
    the bidirectional loss of CLIP, Radford et al. 2021): each in-batch positive product also picks
    its own query out of the batch's queries, with the transposed mask (a query that judged the
    product relevant is not a negative for it), and the loss is the mean of both directions:

        loss_i = 1/2 * [ cross_entropy(logits_i, i) + cross_entropy(scale * cos(p_i, queries), i) ]

    Explicit negatives and logQ enter only the query -> product direction.

    Args:
        temperature: softmax temperature (default 0.05, i.e. scale 20 as in sentence-transformers).
        symmetric: add the product -> query direction (default False).
    Inputs: the common signature (module docstring).
    Returns:
        scalar loss.
    """

    def __init__(self, temperature: float = 0.05, symmetric: bool = False):
        super().__init__()
        self.temperature = temperature
        self.symmetric = symmetric

    @property
    def scale(self) -> float:
        return 1.0 / self.temperature

    def logits(self, query_emb: torch.Tensor, positive_emb: torch.Tensor,
               negative_emb: torch.Tensor | None = None, mask: torch.Tensor | None = None,
               log_q: torch.Tensor | None = None, negative_valid: torch.Tensor | None = None) -> torch.Tensor:
        """The masked, corrected logit matrix (b, b + b*k)."""
        b = query_emb.shape[0]
        cands = positive_emb if negative_emb is None else torch.cat(
            [positive_emb, negative_emb.reshape(-1, negative_emb.shape[-1])], 0)  # (b + b*k, d)
        logits = self.scale * (query_emb @ cands.T)  # (b, b + b*k)
        if log_q is not None:
            logits = logits - log_q.to(logits.device, logits.dtype).unsqueeze(0)
        full = torch.zeros_like(logits, dtype=torch.bool) if mask is None else mask.to(logits.device).clone()
        if negative_emb is not None and negative_valid is not None:
            full[:, b:] |= ~_valid(negative_emb, negative_valid).reshape(1, -1)  # padding slots
        full[torch.arange(b), torch.arange(b)] = False  # the own positive is always the target
        return logits.masked_fill(full, NEG_INF)

    def forward(self, query_emb: torch.Tensor, positive_emb: torch.Tensor, negative_emb: torch.Tensor | None = None,
                weights: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                log_q: torch.Tensor | None = None, negative_valid: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.logits(query_emb, positive_emb, negative_emb, mask, log_q, negative_valid)  # (b, b + b*k)
        b = logits.shape[0]
        target = torch.arange(b, device=logits.device)
        per = F.cross_entropy(logits.float(), target, reduction="none")  # (b,)
        if self.symmetric:
            rev = self.scale * (positive_emb @ query_emb.T)  # (b, b): product j against every query
            if mask is not None:
                full = mask[:, :b].to(rev.device).T.clone()  # (b, b): query i judged product j -> not a negative
                full[target, target] = False
                rev = rev.masked_fill(full, NEG_INF)
            per = 0.5 * (per + F.cross_entropy(rev.float(), target, reduction="none"))  # (b,)
        return _weighted_mean(per, weights)


class CombinedLoss(nn.Module):
    """The plan's recommendation: in-batch negatives plus a weighted contrastive term,

        loss = InBatchNegativesLoss(all inputs) + contrastive_weight * WeightedContrastiveLoss(all inputs)

    where the contrastive pairs are each row's positive (label 1, weight w_i) and each of its
    real explicit negatives (label 0, weight 1).

    Args:
        temperature: InfoNCE temperature (scale = 1 / temperature).
        margin: contrastive cosine-distance margin.
        contrastive_weight: mixing weight of the contrastive term (default 0.5; 0 = pure InfoNCE).
    Inputs: the common signature (module docstring).
    """

    def __init__(self, temperature: float = 0.05, margin: float = 0.5, contrastive_weight: float = 0.5,
                 symmetric: bool = False):
        super().__init__()
        self.in_batch = InBatchNegativesLoss(temperature, symmetric)
        self.contrastive = WeightedContrastiveLoss(margin)
        self.contrastive_weight = contrastive_weight

    def forward(self, query_emb: torch.Tensor, positive_emb: torch.Tensor, negative_emb: torch.Tensor | None = None,
                weights: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                log_q: torch.Tensor | None = None, negative_valid: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.in_batch(query_emb, positive_emb, negative_emb, weights, mask, log_q, negative_valid)
        if self.contrastive_weight == 0:
            return loss
        pair = self.contrastive(query_emb, positive_emb, negative_emb, weights, mask, log_q, negative_valid)
        return loss + self.contrastive_weight * pair


class LexicalDistillLoss(nn.Module):
    """A lexical nudge: KL(teacher || student) over each row's batch candidates, where the teacher
    is the student itself re-ranked by BM25 (the hybrid's second system):

        student_i = log_softmax(scale * cos(q_i, candidates))              masked as in InfoNCE
        teacher_i = softmax(stop_grad(scale * cos(q_i, candidates)) + beta * lex_i)
        loss_i    = KL(teacher_i || student_i)

    lex_i (b + b*k,) is the BM25 score of each candidate for row i's query divided by the row's
    largest (0 where no query term matches), so beta is the logit boost a perfect lexical match
    gets. With beta = 0 the teacher is the student and the loss is 0. The gradient on the logits
    is softmax(student) - teacher: mass moves toward the candidates that share the query's words
    (model numbers, sizes, brands), which mean-pooled MiniLM embeddings tend to blur. It is the
    self-distillation form of lexical-teacher dense retrieval (SPAR, Chen et al. 2022; LED, Zhang
    et al. 2022) at no extra encoding cost: the candidates are the ones InfoNCE already scores.

    Args:
        temperature: the student's softmax temperature (the InfoNCE one).
        beta: logit boost of a candidate with the row's highest BM25 score.
    Inputs: query_emb (b, d), positive_emb (b, d), negative_emb (b, k, d) or None, lexical
        (b, b + b*k) float, weights (b,), mask (b, b + b*k) bool, negative_valid (b, k) bool.
    Returns:
        scalar loss (weighted mean over rows).
    """

    def __init__(self, temperature: float = 0.05, beta: float = 2.0):
        super().__init__()
        self.in_batch = InBatchNegativesLoss(temperature)
        self.beta = beta

    def forward(self, query_emb: torch.Tensor, positive_emb: torch.Tensor, negative_emb: torch.Tensor | None,
                lexical: torch.Tensor, weights: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                negative_valid: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.in_batch.logits(query_emb, positive_emb, negative_emb, mask, None,
                                      negative_valid).float()  # (b, b + b*k), masked
        lex = lexical.to(logits.device, torch.float32)
        lex = lex / lex.amax(dim=1, keepdim=True).clamp_min(1e-12)  # (b, b + b*k) in [0, 1]
        masked = logits <= NEG_INF / 2
        teacher = F.log_softmax((logits.detach() + self.beta * lex).masked_fill(masked, NEG_INF), dim=1)
        per = F.kl_div(F.log_softmax(logits, dim=1), teacher, log_target=True, reduction="none").sum(1)  # (b,)
        return _weighted_mean(per, weights)


LOSSES = {"combined": CombinedLoss, "infonce": InBatchNegativesLoss,
          "contrastive": WeightedContrastiveLoss, "triplet": TripletLoss}


def build_loss(name: str, temperature: float = 0.05, margin: float = 0.5,
               contrastive_weight: float = 0.5, symmetric: bool = False) -> nn.Module:
    """The loss `name` (a key of LOSSES) with the settings that apply to it."""
    if name == "combined":
        return CombinedLoss(temperature, margin, contrastive_weight, symmetric)
    if name == "infonce":
        return InBatchNegativesLoss(temperature, symmetric)
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(sorted(LOSSES))}")
    return LOSSES[name](margin)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def accidental_hit_mask(row_query_ids: Iterable[int], row_positive_ids: Iterable[int],
                        candidate_ids: Iterable[int],
                        positives_by_query: Mapping[int, set] | None = None) -> torch.Tensor:
    """Bool mask (b, c): True where candidate j must not count as a negative for row i.

    A candidate is masked for row i when it is the same product as row i's positive
    (row_positive_ids[i] == candidate_ids[j]) or is judged positive (E/S/C) for row i's query
    (candidate_ids[j] in positives_by_query[row_query_ids[i]]). The loss unmasks the diagonal.
    Candidate id -1 marks a padding slot: masked for every row."""
    rq = list(row_query_ids)
    rp = torch.as_tensor(list(row_positive_ids), dtype=torch.long)
    cand = torch.as_tensor(list(candidate_ids), dtype=torch.long)
    mask = (rp.unsqueeze(1) == cand.unsqueeze(0)) | (cand.unsqueeze(0) < 0)  # (b, c)
    if positives_by_query:
        cand_list = cand.tolist()
        for i, q in enumerate(rq):
            pos = positives_by_query.get(q)
            if pos:
                for j, c in enumerate(cand_list):
                    if c in pos:
                        mask[i, j] = True
    return mask


def log_sampling_probabilities(product_ids: np.ndarray, smoothing: float = 1.0) -> dict:
    """logQ terms: log of each product's frequency among the training positives (add-`smoothing`),
    the probability that it appears as an in-batch candidate under uniform batch sampling."""
    ids, counts = np.unique(np.asarray(product_ids), return_counts=True)
    p = (counts + smoothing) / (counts.sum() + smoothing * len(ids))
    return dict(zip(ids.tolist(), np.log(p).tolist()))
