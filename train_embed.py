"""How the trainer turns one batch's token rows into embeddings (trainer.Trainer._forward calls
these once a batch): the precision context, length-grouped embedding, and the gather across
processes when several train one global batch.

    autocast(device, precision)                     the forward's autocast context (fp32: none)
    embed_local(model, sides, grouped, device)      (len(rows), d) per side, this process's rows
    embed_global(model, sides, grouped, device, rank, world)
                                                    the same over the global batch, gathered

A side is (TokenStore, rows, "query" | "product"): the rows of that store to embed with that
tower. Shapes: each returned tensor is (len(rows), d), in the rows' order.

Example (CPU, seconds; `model` a TwoTowerModel, `q`, `p` TokenStores):
    with autocast(torch.device("cpu"), "fp32"):
        qe, pe = embed_local(model, [(q, np.arange(8), "query"), (p, np.arange(8), "product")],
                             grouped=True, device=torch.device("cpu"))
"""
from __future__ import annotations

import numpy as np
import torch

from train_data import TokenStore, length_groups, stack_batch

Side = tuple[TokenStore, np.ndarray, str]


def autocast(device: torch.device, precision: str):
    """The autocast context of a training forward: none in fp32, else bf16 or fp16 autocast."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def embed_local(model, sides: list[Side], grouped: bool, device: torch.device) -> list[torch.Tensor]:
    """(len(rows), d) embeddings of each (store, rows, side), in their order. With `grouped`
    (--length-groups; auto: on the CPU) the texts are embedded in length-sorted groups
    (train_data.length_groups), each padded to its own longest text only, the word embeddings of
    all groups looked up in one call (TwoTowerModel.embed_batches); when the towers share weights,
    the groups mix the sides (a short title with the queries, a long query with the titles). The
    same embeddings up to float rounding (padding is masked out of attention and pooling) from
    fewer computed tokens and one embedding gradient a step instead of one a group
    (docs/benchmarks.md, "Length groups")."""
    d = model.config.embedding_dim
    if not grouped:
        return [model.embed(store.batch(rows), side) if len(rows) else torch.zeros(0, d, device=device)
                for store, rows, side in sides]
    units = [list(range(len(sides)))] if model.towers_shared else [[k] for k in range(len(sides))]
    out: list[torch.Tensor | None] = [None] * len(sides)
    for unit in units:
        which = np.concatenate([np.full(len(sides[k][1]), k) for k in unit]).astype(np.int64)
        at = np.concatenate([np.arange(len(sides[k][1])) for k in unit]).astype(np.int64)
        lengths = np.concatenate([sides[k][0].lengths[sides[k][1]] for k in unit])
        groups = length_groups(lengths) if len(lengths) > 1 else [np.arange(len(lengths))]
        batches, order = [], []
        for g in groups:
            g = np.concatenate([g[which[g] == k] for k in unit])  # side by side within the group
            order.append(g)
            batches.append(stack_batch([(sides[k][0], sides[k][1][at[g[which[g] == k]]]) for k in unit]))
        side = sides[unit[0]][2] if len(unit) == 1 else "query"  # shared towers: either side
        emb = torch.cat(model.embed_batches(batches, side)) if batches else None  # (n, d), grouped order
        order = np.concatenate(order) if order else np.zeros(0, np.int64)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        for k in unit:
            rows_k = np.flatnonzero(which == k)
            out[k] = (emb[torch.from_numpy(inverse[rows_k]).to(emb.device)] if len(rows_k)
                      else torch.zeros(0, d, device=device))
    return out


def embed_global(model, sides: list[Side], grouped: bool, device: torch.device, rank: int,
                 world: int) -> list[torch.Tensor]:
    """embed_local of this process's slice of each side's rows, each side gathered into the
    global batch (gradients flow back through torch.distributed.nn's all_gather)."""
    if world == 1:
        return embed_local(model, sides, grouped, device)
    parts = [np.array_split(rows, world) for _, rows, _ in sides]
    local = embed_local(model, [(st, p[rank], side) for (st, _, side), p in zip(sides, parts)], grouped, device)
    import torch.distributed.nn.functional as dnn
    out = []
    for loc, p in zip(local, parts):
        n = max(len(x) for x in p)
        padded = torch.zeros(n, model.config.embedding_dim, device=device, dtype=loc.dtype)
        padded = torch.cat([loc, padded[len(loc):]]) if len(loc) < n else loc
        gathered = dnn.all_gather(padded)
        out.append(torch.cat([g[:len(x)] for g, x in zip(gathered, p)]))
    return out
