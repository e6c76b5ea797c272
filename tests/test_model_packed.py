"""The packed encoder (only computed tokens through the backbone) equals the padded transformers
forward: vectors and gradients, ragged lengths 1..max, BERT and ModernBERT (global and
sliding-window layers), query expansion with and without FA-compat; the attention kernels agree;
the fallback is taken for unknown architectures; training and encode use it."""

from __future__ import annotations

import contextlib
import copy
import logging
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tokenizer, minilm_path
from hypothesis import given, settings
from hypothesis import strategies as st
from test_losses_helpers import contrastive_batch, contrastive_texts, distillation_batch, one_thread, texts

from colzero import ColBERT, ColBERTConfig, DenseConfig, DenseModel
from colzero.losses import CachedContrastive, Contrastive, Distillation
from colzero.model import attention as A
from colzero.model import base as model_base
from colzero.model.attention import PackedLayout, choose_kernel, packed_attention
from colzero.model.packed import packed_hidden_states

_threads = pytest.fixture(autouse=True)(one_thread)

MAX_LEN = 40


def backbone(arch: str, vocab: int, seed: int = 0):
    """Tiny random encoders. ModernBERT: 3 layers = global, sliding (window 8: +-4 tokens, binds at
    40 tokens), global. Dropout 0 so that training-mode forwards are deterministic."""
    from transformers import AutoModel, BertConfig, DistilBertConfig, ModernBertConfig, RobertaConfig

    torch.manual_seed(seed)
    if arch == "bert":
        cfg = BertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )  # fmt: skip
    elif arch == "roberta":  # positions from the ids: padding_idx + 1 + rank among non-padding ids
        cfg = RobertaConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=MAX_LEN + 3, pad_token_id=1,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )  # fmt: skip
    elif arch == "modernbert":
        cfg = ModernBertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
            intermediate_size=48, max_position_embeddings=128, pad_token_id=0, cls_token_id=2,
            sep_token_id=3, bos_token_id=2, eos_token_id=3, global_attn_every_n_layers=2,
            local_attention=8,
        )  # fmt: skip
    elif arch == "distilbert":
        cfg = DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64, dropout=0.0)
    else:
        raise ValueError(arch)
    cfg._attn_implementation = "sdpa"
    return AutoModel.from_config(cfg)


def twins(arch: str, cls=ColBERT, **settings):
    """The same model twice: padded transformers forward (packing off) and packed."""
    tok = make_tokenizer()
    bb = backbone(arch, len(tok) + 2)
    if cls is ColBERT:
        settings = {"query_length": MAX_LEN, "document_length": MAX_LEN, "embedding_dim": 16, **settings}
        make = ColBERTConfig
    else:
        make = DenseConfig
    out = []
    for packing in ("off", settings.pop("packing", "auto")):
        torch.manual_seed(1)  # same projection
        out.append(cls(copy.deepcopy(bb), copy.deepcopy(tok), make(packing=packing, **settings)))
    return out


def ragged(model, n_rows: int = MAX_LEN, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with 1..MAX_LEN attended tokens (shuffled), padded to MAX_LEN with the pad id."""
    g = torch.Generator().manual_seed(seed)
    lengths = [1 + i % MAX_LEN for i in range(n_rows)]
    random.Random(seed).shuffle(lengths)
    ids = torch.randint(5, len(model.tokenizer), (n_rows, MAX_LEN), generator=g)
    mask = (torch.arange(MAX_LEN)[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids.masked_fill(mask == 0, model.expansion_token_id)
    ids[::7, 3] = 1  # RoBERTa's padding_idx inside some rows: it shifts the positions after it
    return ids, mask


def computed_positions(model, mask: torch.Tensor, role) -> torch.Tensor:
    """Positions whose vectors are defined: every one for non-FA-compat query expansion (and for
    role None), the attended ones otherwise."""
    if not model.config.flash_attention_compat and role != "document":
        return torch.ones_like(mask, dtype=torch.bool)
    return mask.bool()


def run(model, ids, mask, role, weights):
    model.zero_grad(set_to_none=True)
    vectors = model(ids, mask, role=role)
    keep = computed_positions(model, mask, role)
    (vectors * weights)[keep].sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return vectors.detach(), keep, grads


@pytest.mark.parametrize("arch", ["bert", "modernbert", "roberta"])
@pytest.mark.parametrize("role", ["query", "document", None])
@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_equals_padded_vectors_and_gradients(arch, role, compat, dtype):
    """Vectors within 1e-5; every gradient tensor within 1e-5 of its largest entry (at least 1) in
    float32 (summation order differs: e.g. a position embedding's gradient sums 40 rows); both
    within 1e-8 in float64 (the same arithmetic)."""
    padded, packed = twins(arch, flash_attention_compat=compat)
    assert padded.packed_architecture()[0] is None and packed.packed_architecture()[0] == arch
    padded.to(dtype).train(), packed.to(dtype).train()
    ids, mask = ragged(padded)
    weights = torch.randn(*ids.shape, 16, generator=torch.Generator().manual_seed(3))
    vp, keep, gp = run(padded, ids, mask, role, weights)
    vk, _, gk = run(packed, ids, mask, role, weights)
    tol = 1e-5 if dtype == torch.float32 else 1e-8  # float64: ModernBERT's RoPE is fp32 in transformers too
    torch.testing.assert_close(vk[keep], vp[keep].float(), rtol=0, atol=tol)
    assert torch.all(vk[~keep] == 0), "positions not computed come out as zero vectors"
    if compat:  # FA-compat: unattended positions are zero on both paths
        assert torch.all(vp[~mask.bool()] == 0)
    assert gp.keys() == gk.keys() and len(gp) > 10
    for name in gp:
        scale = max(1.0, float(gp[name].abs().max()))
        diff = float((gk[name] - gp[name]).abs().max())
        assert diff <= tol * scale, f"{name}: gradient differs by {diff:.3g} (largest entry {scale:.3g})"


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
@pytest.mark.parametrize("role", ["query", "document"])
def test_packed_tokens_through_every_layer_equal_padded(monkeypatch, arch, role):
    """The accelerator strategy (packed tokens through every layer, gathered into length buckets
    around each attention), forced on the CPU: vectors and gradients as the padded forward."""
    from colzero.model import packed as packed_module

    monkeypatch.setattr(packed_module, "bucketed_forward", lambda device: False)
    padded, packed = twins(arch)
    ids, mask = ragged(padded)
    weights = torch.randn(*ids.shape, 16, generator=torch.Generator().manual_seed(3))
    vp, keep, gp = run(padded.train(), ids, mask, role, weights)
    vk, _, gk = run(packed.train(), ids, mask, role, weights)
    torch.testing.assert_close(vk[keep], vp[keep], rtol=0, atol=1e-5)
    for name in gp:
        assert float((gk[name] - gp[name]).abs().max()) <= 1e-5 * max(1.0, float(gp[name].abs().max())), name


def test_query_expansion_without_compat_scores_unattended_positions():
    """The expansion positions of a query are computed (and differ from zero) without FA-compat,
    are zero with it, and the attended positions are the same either way."""
    (_, plain), (_, compat) = twins("modernbert"), twins("modernbert", flash_attention_compat=True)
    compat.load_state_dict(plain.state_dict())
    queries = ["who wrote the paper", "quick brown fox jumps over the lazy dog"]
    tb = plain.tokenize(queries, "query")
    hidden = ~tb.attention_mask.bool()
    assert hidden.any()
    with torch.no_grad():
        a, b = plain.eval().embed(tb, "query")[0], compat.eval().embed(tb, "query")[0]
    assert torch.all(a[hidden].norm(dim=-1) > 0.99) and torch.all(b[hidden] == 0)
    torch.testing.assert_close(a[~hidden], b[~hidden], rtol=0, atol=1e-6)


def test_dense_model_packed_equals_padded():
    padded, packed = twins("bert", cls=DenseModel)
    docs = texts(9, 0, 1, 40)
    torch.testing.assert_close(
        packed.encode(docs, precision="fp32"), padded.encode(docs, precision="fp32"), rtol=0, atol=1e-6
    )


def test_gradient_checkpointing_gives_the_same_gradients():
    _, packed = twins("modernbert")
    ckpt = copy.deepcopy(packed)
    ckpt.backbone.gradient_checkpointing_enable()
    ids, mask = ragged(packed)
    weights = torch.randn(*ids.shape, 16)
    _, _, g = run(packed.train(), ids, mask, "document", weights)
    _, _, gc = run(ckpt.train(), ids, mask, "document", weights)
    for name in g:
        torch.testing.assert_close(gc[name], g[name], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- real model


def test_real_minilm_packed_equals_padded():
    path = minilm_path()
    torch.manual_seed(0)
    padded = ColBERT.from_pretrained(path, document_length=64, packing="off").eval()
    torch.manual_seed(0)
    packed = ColBERT.from_pretrained(path, document_length=64).eval()
    assert packed.packed_architecture() == ("bert", "ok")
    docs = ["a", "ColBERT scores queries against documents with MaxSim.", *texts(6, 5, 1, 60)]
    queries = ["what is late interaction?", "fox"]
    for role, items in (("document", docs), ("query", queries)):
        a = packed.encode(items, role, precision="fp32", batch_size=4)
        b = padded.encode(items, role, precision="fp32", batch_size=4)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-5)
    # gradients on one small batch
    tb = packed.tokenize(docs[:4], "document")
    grads = []
    for model in (padded, packed):
        model.zero_grad(set_to_none=True)
        v, m = model.embed(tb, "document")
        v[m].sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    for name, ref in grads[0].items():
        scale = max(1.0, float(ref.abs().max()))
        assert float((grads[1][name] - ref).abs().max()) <= 1e-5 * scale, name


# ---------------------------------------------------------------------------- fallback and dispatch


def test_unknown_architecture_falls_back_to_the_padded_forward(caplog, monkeypatch):
    tok = make_tokenizer()
    torch.manual_seed(1)
    model = ColBERT(backbone("distilbert", len(tok) + 2), tok, ColBERTConfig(query_length=16)).eval()
    name, reason = model.packed_architecture()
    assert name is None and "DistilBertModel" in reason
    called = []
    monkeypatch.setattr(model_base, "packed_hidden_states", lambda *a, **k: called.append(1))
    docs = texts(5, 1, 1, 30)
    tb = model.tokenize(docs, "document")
    with caplog.at_level(logging.INFO, logger="colzero.model.base"), torch.no_grad():
        vectors = model(**tb.model_inputs(), role="document")
        hidden = model.backbone(input_ids=tb.input_ids, attention_mask=tb.attention_mask).last_hidden_state
    assert not called
    assert any("padded encoder" in r.message and "DistilBertModel" in r.message for r in caplog.records)
    expected = F.normalize(model.projection(hidden), dim=-1)
    keep = tb.attention_mask.bool()
    torch.testing.assert_close(vectors[keep], expected[keep], rtol=0, atol=1e-6)


def test_explicit_kernel_that_cannot_run_here_is_a_clear_error():
    _, packed = twins("bert", packing="varlen")
    ids, mask = ragged(packed, 4)
    with pytest.raises(ValueError, match="varlen.*cannot run here"):
        packed(ids, mask, role="document")
    with pytest.raises(ValueError, match=r"packing must be one of"):
        ColBERTConfig(packing="unpadded")


def test_kernel_choice():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    common = {"window": None, "query_only": False, "contiguous": True, "dropout": 0.0}
    assert choose_kernel("auto", cpu, torch.float32, **common) == "sdpa"
    assert choose_kernel("auto", cuda, torch.float32, **common) == ("flex" if A.flex_available() else "sdpa")
    if A.varlen_function() is not None:
        assert choose_kernel("auto", cuda, torch.bfloat16, **common) == "varlen"
        # attention dropout: varlen and flex have none
        assert choose_kernel("auto", cuda, torch.bfloat16, **{**common, "dropout": 0.1}) == "sdpa"
        # a binding window with query-only tokens: varlen's window is aligned to the key ends
        windowed = {**common, "window": 64, "query_only": True}
        assert choose_kernel("auto", cuda, torch.bfloat16, **windowed) != "varlen"
        assert choose_kernel("auto", cuda, torch.bfloat16, **{**windowed, "window": None}) == "varlen"
    with pytest.raises(ValueError, match="flex.*dropout"):
        choose_kernel("flex", cpu, torch.float32, **{**common, "dropout": 0.1})


# ---------------------------------------------------------------------------- the kernels


def random_layout(seed: int, rows: int, width: int, query_only: bool, holes: bool = False):
    rng = random.Random(seed)
    lengths = [rng.randint(1, width) for _ in range(rows)]
    attended = torch.zeros(rows, width, dtype=torch.bool)
    computed = torch.zeros(rows, width, dtype=torch.bool)
    for r, n in enumerate(lengths):
        attended[r, :n] = True
        if holes and n > 2:
            attended[r, rng.randrange(1, n)] = False
        if query_only:
            computed[r, : rng.randint(n, width)] = True
    return PackedLayout.from_masks(computed, attended, min_fill=1.0), attended, computed | attended


def dense_reference(q, k, v, layout, attended_padded, window, scale):
    """float64 attention on the padded layout with an explicit mask (the definition)."""
    b, w = layout.batch, layout.width
    qp, kp, vp = (layout.scatter(x.double()).transpose(1, 2) for x in (q, k, v))  # (B, H, W, D)
    pos = torch.arange(w)
    allowed = attended_padded[:, None, None, :].expand(b, 1, w, w)
    if window is not None:
        allowed = allowed & ((pos[:, None] - pos[None, :]).abs() <= window)
    scores = (qp @ kp.transpose(-1, -2)) * scale
    out = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0) @ vp
    return layout.gather(out.transpose(1, 2))


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("query_only", [False, True])
@pytest.mark.parametrize("holes", [False, True])
def test_sdpa_and_flex_kernels_equal_the_definition(window, query_only, holes):
    layout, attended, _ = random_layout(7, 23, 37, query_only, holes)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(layout.tokens, 2, 8, generator=g) for _ in range(3))
    ref = dense_reference(q, k, v, layout, attended, window, 8**-0.5)
    got = packed_attention(q, k, v, layout, window=window, kernel="sdpa")  # CPU: one call per row
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-5)
    # gradients: the kernel's against the float64 definition's
    leaves = [x.double().requires_grad_() for x in (q, k, v)]
    w = torch.randn(got.shape, generator=g, dtype=torch.float64)
    want = torch.autograd.grad(
        (dense_reference(*leaves, layout, attended, window, 8**-0.5) * w).sum(), leaves
    )
    leaves32 = [x.clone().requires_grad_() for x in (q, k, v)]
    out = packed_attention(*leaves32, layout, window=window, kernel="sdpa")
    for a, b in zip(torch.autograd.grad((out * w.float()).sum(), leaves32), want, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=1e-5)
    assert len(layout.buckets()) > 1


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
    """torch's varlen_attn semantics (FlashAttention's, top-left aligned for equal lengths), in
    float64 per sequence: stands in for the CUDA kernel to check what colzero passes to it."""
    out = torch.zeros_like(q, dtype=torch.float64)
    left, right = window_size
    for s in range(len(cu_q) - 1):
        qs, ks = slice(int(cu_q[s]), int(cu_q[s + 1])), slice(int(cu_k[s]), int(cu_k[s + 1]))
        assert qs.stop - qs.start <= max_q and ks.stop - ks.start <= max_k
        qq, kk, vv = (
            q[qs].double().transpose(0, 1),
            k[ks].double().transpose(0, 1),
            v[ks].double().transpose(0, 1),
        )
        i = torch.arange(qq.shape[1])[:, None] + (kk.shape[1] - qq.shape[1])  # bottom-right alignment
        j = torch.arange(kk.shape[1])[None, :]
        allowed = torch.ones(i.shape[0], j.shape[1], dtype=torch.bool)
        if left >= 0:
            allowed &= j >= i - left
        if right >= 0:
            allowed &= j <= i + right
        scores = (qq @ kk.transpose(-1, -2)) * (scale or q.shape[-1] ** -0.5)
        out[qs] = (scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ vv).transpose(0, 1)
    return out


@pytest.mark.parametrize(("window", "query_only"), [(None, False), (3, False), (None, True)])
def test_varlen_call_matches_the_definition(monkeypatch, window, query_only):
    """The arguments colzero gives ``varlen_attn`` (offsets, key gathering for query-only tokens,
    the window as (w, w)) give the defined attention, with a float64 stand-in for the kernel."""
    monkeypatch.setattr(A, "varlen_function", lambda: reference_varlen)
    layout, attended, _ = random_layout(11, 17, 29, query_only)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(layout.tokens, 2, 8, generator=g) for _ in range(3))
    ref = dense_reference(q, k, v, layout, attended, window, 8**-0.5)
    got = A._varlen((q, k, v), layout, layout.binding_window(window), 8**-0.5)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)


def test_varlen_probe_runs_under_no_grad_and_inference_mode(monkeypatch):
    """The one-time varlen probe (forward and backward) must work from inside GradCache's no-grad
    pass and encode's inference mode; a kernel that raises is reported, not raised."""
    monkeypatch.setattr(A, "varlen_function", lambda: reference_varlen)
    A.varlen_failure.cache_clear()
    try:
        with torch.no_grad():
            assert A.varlen_failure(torch.device("cpu"), torch.float64, True) is None
        A.varlen_failure.cache_clear()
        with torch.inference_mode():
            assert A.varlen_failure(torch.device("cpu"), torch.float64, False) is None

        def broken(*args, **kwargs):
            raise RuntimeError("cuDNN backend does not support window attention")

        monkeypatch.setattr(A, "varlen_function", lambda: broken)
        A.varlen_failure.cache_clear()
        assert "does not support window" in A.varlen_failure(torch.device("cpu"), torch.float64, True)
    finally:
        A.varlen_failure.cache_clear()


def test_flex_block_mask_covers_every_allowed_pair():
    """Every (query, key) pair the mask function allows lies in a tile the block mask visits (the
    tiles are built from the offsets, not by evaluating the mask): 3 x 128-token tiles, rows of
    1..200 tokens, a window of 20."""
    if not A.flex_available():
        pytest.skip("this torch has no flex_attention")
    layout, _, _ = random_layout(5, 6, 200, query_only=True)
    for window in (None, 20):
        mask, padded = layout.flex_mask(window)
        kv_num = mask.kv_num_blocks[0, 0].tolist()
        kv_idx = mask.kv_indices[0, 0].tolist()
        visited = torch.zeros(padded // A.FLEX_BLOCK, padded // A.FLEX_BLOCK, dtype=torch.bool)
        for qb, n in enumerate(kv_num):
            visited[qb, kv_idx[qb][:n]] = True
        qi = torch.arange(padded)[:, None]
        ki = torch.arange(padded)[None, :]
        allowed = mask.mask_mod(0, 0, qi, ki)
        needed = allowed.view(padded // 128, 128, padded // 128, 128).any(3).any(1)
        assert not (needed & ~visited).any()
        assert visited.sum() < visited.numel() or window is None


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 20),
    width=st.integers(1, 30),
    seed=st.integers(0, 10_000),
    query_only=st.booleans(),
    holes=st.booleans(),
)
def test_layout_round_trip_and_buckets(rows, width, seed, query_only, holes):
    layout, attended, computed = random_layout(seed, rows, width, query_only, holes)
    assert layout is not None
    x = torch.randn(rows, width, 3)
    packed = layout.gather(x)
    assert packed.shape == (int(computed.sum()), 3)
    back = layout.scatter(packed)
    assert torch.equal(back[computed], x[computed]) and torch.all(back[~computed] == 0)
    assert layout.cu_seqlens[-1] == layout.tokens and layout.max_len == int(computed.sum(1).max())
    assert layout.query_only == bool((computed & ~attended).any())
    covered = torch.cat([b.tokens if b.tokens is not None else torch.arange(b.start, b.start + b.count)
                         for b in layout.buckets()])  # fmt: skip
    assert sorted(covered.tolist()) == list(range(layout.tokens))


def test_nearly_full_batches_run_as_one_rectangle(monkeypatch):
    """A batch whose computed tokens fill >= 75% of it runs as one rectangle on the CPU (the extra
    positions as query-only tokens, zeroed at the end): same vectors and gradients as padded. With
    the fp32 residual stream that rectangle is transformers' own forward (no packed-runner overhead)."""
    padded, packed = twins("modernbert")
    ids, mask = ragged(padded, 8)
    mask[:] = 1
    mask[0, -3:] = 0  # 3 of 320 positions hidden
    layout = PackedLayout.from_masks(mask.bool(), mask.bool())
    assert layout.dense and layout.wanted is not None and layout.query_only
    weights = torch.randn(*ids.shape, 16)
    vp, keep, gp = run(padded.train(), ids, mask, "document", weights)
    with counting(monkeypatch) as calls:
        vt, _, gt = run(packed.train(), ids, mask, "document", weights)
    assert calls == []  # transformers' forward: the padded model's numbers exactly
    torch.testing.assert_close(vt, vp, rtol=0, atol=0)
    monkeypatch.setattr(model_base, "bucketed_forward", lambda device: False)  # the packed runner
    with counting(monkeypatch) as calls:
        vk, _, gk = run(packed.train(), ids, mask, "document", weights)
    assert calls == [1]
    torch.testing.assert_close(vk[keep], vp[keep], rtol=0, atol=1e-5)
    assert torch.all(vk[~keep] == 0)
    for name in gp:
        assert float((gk[name] - gp[name]).abs().max()) <= 1e-5 * max(1.0, float(gp[name].abs().max()))
    assert not PackedLayout.from_masks(mask.bool(), mask.bool(), min_fill=1.0).dense


def test_rows_without_attended_tokens_use_the_padded_forward():
    computed = torch.ones(2, 4, dtype=torch.bool)
    attended = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert PackedLayout.from_masks(computed, attended) is None


# ---------------------------------------------------------------------------- precision


def test_residual_in_the_autocast_dtype():
    """``residual_precision="autocast"``: hidden states stay bf16 under bf16 autocast, the vectors
    stay within bf16 rounding of fp32, and differ from transformers' fp32 residual stream."""
    _, packed = twins("modernbert")
    packed.eval()
    ids, mask = ragged(packed, 12)
    layout = PackedLayout.from_masks(mask.bool(), mask.bool())
    with torch.no_grad():
        ref = packed_hidden_states(packed.backbone, ids, None, layout)
        out = {}
        for residual in ("fp32", "half"):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out[residual] = packed_hidden_states(packed.backbone, ids, None, layout, residual=residual)
    assert ref.dtype == torch.float32 and out["fp32"].dtype == torch.float32
    assert out["half"].dtype == torch.bfloat16
    for h in out.values():
        cos = F.cosine_similarity(h.float(), ref, dim=-1)
        assert cos.min() > 0.99
    assert not torch.equal(out["half"].float(), out["fp32"])


# ---------------------------------------------------------------------------- used everywhere


@contextlib.contextmanager
def counting(monkeypatch):
    calls: list[int] = []
    real = model_base.packed_hidden_states

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model_base, "packed_hidden_states", spy)
    yield calls


@pytest.mark.parametrize(
    "make_loss", [Contrastive, lambda m: CachedContrastive(m, mini_batch_size=2), Distillation]
)
def test_training_losses_and_encode_run_packed(monkeypatch, make_loss):
    _, model = twins("modernbert")
    model.train()
    loss_fn = make_loss(model)
    if isinstance(loss_fn, Distillation):
        docs = texts(5, 1, 2, 4) + texts(1, 3, 30, 30)  # ragged: under 75% full, packed on the CPU too
        batch = distillation_batch(model, texts(2, 0, 1, 2), docs, torch.randn(2, 3))
    else:
        batch = contrastive_batch(model, *contrastive_texts(4, 1), 1)
    with counting(monkeypatch) as calls:
        loss_fn(batch).backward()
        forward_calls = len(calls)
        model.encode(texts(3, 2), "document")
    # the documents run packed; queries without FA-compat compute every position (expansion tokens
    # as query-only tokens), fill their batch and run as transformers' rectangle on the CPU
    assert forward_calls >= 1 and len(calls) > forward_calls
    assert all(p.grad is not None for p in model.backbone.layers.parameters())
