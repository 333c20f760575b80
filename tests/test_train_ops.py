"""train_ops.py: the training dropout's masks, the attention it goes in, and how the trainer uses them."""
import copy

import pytest
import torch

import train_ops as T


@pytest.mark.parametrize("p", [0.1, 0.5, 0.03])
def test_keep_mask_keeps_each_element_with_probability_1_minus_p_independently(p):
    torch.manual_seed(0)
    n = 400_000
    keep = T.keep_mask((n,), p)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    sd = (p * (1 - p) / n) ** 0.5
    assert abs((~keep).float().mean().item() - p) < 5 * sd
    lanes = (~keep).view(-1, 4).float()  # the four lanes cut from one 64-bit word must not move together
    both = (lanes[:, 0] * lanes[:, 1]).mean().item()
    assert abs(both - p * p) < 5 * (p * p / (n / 4)) ** 0.5
    assert not torch.equal(keep, T.keep_mask((n,), p))  # a fresh draw each call
    torch.manual_seed(1)
    a = T.keep_mask((3, 5, 7), p)
    torch.manual_seed(1)
    assert torch.equal(a, T.keep_mask((3, 5, 7), p)) and a.shape == (3, 5, 7)  # the default generator's stream


def test_dropout_zeroes_or_scales_each_element_and_its_gradient_alike():
    torch.manual_seed(0)
    x = (torch.rand(300, 64) + 0.5).requires_grad_()
    y = T.dropout(x, 0.2)
    kept = y != 0
    assert 0.15 < 1 - kept.float().mean().item() < 0.25
    assert torch.allclose(y[kept], x[kept] / 0.8)
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.allclose(x.grad, torch.where(kept, g / 0.8, torch.zeros_like(g)))
    assert T.dropout(x, 0.2, training=False) is x and T.dropout(x, 0.0) is x
    assert torch.equal(T.dropout(x, 1.0), torch.zeros_like(x))
    xb = torch.ones(1000, 100, dtype=torch.bfloat16)
    yb = T.dropout(xb, 0.1)
    assert yb.dtype == torch.bfloat16 and abs(yb.float().mean().item() - 1.0) < 0.01  # expectation kept
    m = T.FastDropout(0.2).train()
    assert isinstance(m, torch.nn.Dropout) and (m(x) == 0).any() and torch.equal(m.eval()(x), x)


def _qkv(b=3, h=2, n=5, d=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, h, n, d, generator=g, dtype=dtype) for _ in range(3)]


def test_attention_is_sdpa_without_dropout_and_drops_the_probabilities_with_it():
    q, k, v = _qkv()
    pad = torch.ones(3, 1, 5, 5, dtype=torch.bool)
    pad[0, ..., 3:] = False  # text 0 has 3 tokens
    module = torch.nn.Module().train()
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=pad).transpose(1, 2)
    out, w = T.attention(module, q, k, v, pad, dropout=0.0)
    assert w is None and out.shape == (3, 5, 2, 4) and torch.allclose(out, ref, atol=1e-6)
    out, _ = T.attention(module.eval(), q, k, v, pad, dropout=0.3)  # eval: no dropout at all
    assert torch.allclose(out, ref, atol=1e-6)
    module.train()
    torch.manual_seed(5)
    out, _ = T.attention(module, q, k, v, pad, dropout=0.3)
    torch.manual_seed(5)  # the same mask, by hand in float64
    keep = T.keep_mask((3, 2, 5, 5), 0.3)
    s = (q.double() @ k.double().transpose(-1, -2)) * 4 ** -0.5
    probs = s.masked_fill(~pad, float("-inf")).softmax(-1) * keep / 0.7
    assert torch.allclose(out, (probs @ v.double()).transpose(1, 2).float(), atol=1e-5)
    additive = torch.zeros(3, 1, 5, 5).masked_fill(~pad, torch.finfo(torch.float32).min)
    torch.manual_seed(5)
    assert torch.allclose(T.attention(module, q, k, v, additive, dropout=0.3)[0], out, atol=1e-6)
    qb, kb, vb = (t.bfloat16() for t in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ob, _ = T.attention(module, qb, kb, vb, pad, dropout=0.3)
    assert ob.dtype == torch.bfloat16  # fp32 inside, the caller's dtype out, as SDPA under autocast


def test_use_fast_dropout_changes_training_forwards_only(tiny_encoder_dir):
    from train_ops import set_dropout
    from two_tower_model import TwoTowerModel
    torch.manual_seed(0)
    ref = TwoTowerModel.from_pretrained(str(tiny_encoder_dir))
    fast = copy.deepcopy(ref)
    n_dropout = sum(isinstance(m, torch.nn.Dropout) for m in ref.modules())
    assert T.use_fast_dropout(fast) == n_dropout == 2 * 3 + 1
    assert all(type(m) is T.FastDropout for m in fast.modules() if isinstance(m, torch.nn.Dropout))
    assert fast.query_tower.encoder.config._attn_implementation == T.ATTENTION
    assert T.use_fast_dropout(fast) == 0  # a second call finds nothing left to replace
    batch = ref.tokenizer(["red cordless drill", "2x4 stud 8 ft pressure treated"], padding=True,
                          return_tensors="pt")
    ids, am = batch["input_ids"], batch["attention_mask"]
    ref.eval(), fast.eval()
    with torch.no_grad():
        assert torch.allclose(ref.query_tower(ids, am), fast.query_tower(ids, am), atol=1e-6)
    ref.train(), fast.train()
    torch.manual_seed(3)
    a = ref.query_tower(ids, am)
    torch.manual_seed(3)
    b = fast.query_tower(ids, am)
    assert not torch.allclose(a, b, atol=1e-4)  # other masks
    set_dropout(ref, 0.0), set_dropout(fast, 0.0)  # the attention reads its module's p: 0 = SDPA again
    assert torch.allclose(ref.query_tower(ids, am), fast.query_tower(ids, am), atol=1e-6)
    b.sum().backward()
    assert all(p.grad is not None for p in fast.query_tower.encoder.encoder.parameters())


def test_a_checkpoint_trained_with_the_fast_kernel_loads_with_the_default_attention(data_dir, tmp_path,
                                                                                     tiny_encoder_dir):
    import train_two_tower as tt
    from two_tower_model import TwoTowerModel
    ck = tmp_path / "ck"
    tt.main(tt.parse_args(["--stage", "1", "--data-dir", str(data_dir), "--checkpoint-dir", str(ck),
                           "--base-model", str(tiny_encoder_dir), "--max-steps", "2", "--epochs", "1",
                           "--batch-size", "8", "--val-corpus-size", "100", "--val-batches", "2"]))
    cfg = torch.load(ck / "stage1.pt", weights_only=True)["config"]
    assert T.ATTENTION not in repr(cfg)
    model = TwoTowerModel.from_pretrained(ck / "stage1.pt")
    assert model.query_tower.encoder.config._attn_implementation == "sdpa"
    assert not any(isinstance(m, T.FastDropout) for m in model.modules())
