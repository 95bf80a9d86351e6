"""KD losses against independent references: the full-vocabulary divergence when k = V, a naive
float64 numpy top-k formula otherwise, TRL's own sparse divergence, and autograd for the
chunked loss's gradients; masking and a few real optimizer steps on a tiny Llama."""
import numpy as np
import pytest
import torch

from pipeline import losses
from pipeline.config import KDConfig
from pipeline.train import _add_distill_head, collate, shared_prefix_len
from tests.conftest import make_tiny_llama

N, V = 7, 50


def _case(seed=0, k=V):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    student = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    lp = torch.log_softmax(teacher, -1)
    top_lp, top_ids = lp.topk(k, dim=-1)
    return teacher, student, top_ids, top_lp


def _np_softmax_log(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _naive(student_logits, top_ids, top_lp, temperature, kind, beta, tail):
    """float64 numpy, position by position."""
    out = []
    for n in range(student_logits.shape[0]):
        z = student_logits[n].numpy()
        ids, tl = top_ids[n].numpy(), top_lp[n].numpy()
        q_full = np.exp(_np_softmax_log(z))
        if tail == "renormalize":
            p = np.exp(tl) / np.exp(tl).sum()
            q = q_full[ids] / q_full[ids].sum()
        else:
            p = np.append(np.exp(tl), max(1 - np.exp(tl).sum(), np.expm1(1e-7)))
            q = np.append(q_full[ids], max(1 - q_full[ids].sum(), np.expm1(1e-7)))
        p = p ** (1 / temperature) / (p ** (1 / temperature)).sum()
        q = q ** (1 / temperature) / (q ** (1 / temperature)).sum()
        if kind == "forward_kl":
            d = (p * np.log(p / q)).sum()
        elif kind == "reverse_kl":
            d = (q * np.log(q / p)).sum()
        else:
            m = beta * p + (1 - beta) * q
            d = beta * (p * np.log(p / m)).sum() + (1 - beta) * (q * np.log(q / m)).sum()
        out.append(d * temperature**2)
    return np.array(out)


@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_full_vocabulary_equals_dense_divergence(kind, beta, temperature):
    teacher, student, ids, lp = _case()
    s = losses.student_logprobs(torch.log_softmax(student, -1), ids, temperature, "renormalize")
    t = losses.teacher_logprobs(lp, temperature, "renormalize")
    got = losses.divergence(s, t, kind, beta).double() * temperature**2
    p = torch.log_softmax(teacher / temperature, -1)
    q = torch.log_softmax(student / temperature, -1)
    if kind == "forward_kl":
        dense = (p.exp() * (p - q)).sum(-1)
    elif kind == "reverse_kl":
        dense = (q.exp() * (q - p)).sum(-1)
    else:
        m = torch.log(beta * p.exp() + (1 - beta) * q.exp())
        dense = beta * (p.exp() * (p - m)).sum(-1) + (1 - beta) * (q.exp() * (q - m)).sum(-1)
    torch.testing.assert_close(got, dense * temperature**2, atol=1e-5, rtol=1e-5)
    # the tail bucket is empty when k = V: the same value
    s_b = losses.student_logprobs(torch.log_softmax(student, -1), ids, temperature, "bucket")
    t_b = losses.teacher_logprobs(lp, temperature, "bucket")
    torch.testing.assert_close(losses.divergence(s_b, t_b, kind, beta).double() * temperature**2,
                               dense * temperature**2, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_top_k_equals_naive_formula(tail, kind, beta, temperature):
    _, student, ids, lp = _case(seed=1, k=5)
    _, kd, t_mass, s_mass = losses.token_losses(student.float(), ids[:, 0], ids, lp.float(), temperature, kind, beta,
                                                tail)
    np.testing.assert_allclose(kd.numpy(), _naive(student, ids, lp, temperature, kind, beta, tail), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(t_mass.numpy(), lp.exp().sum(-1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(s_mass.numpy(), torch.softmax(student, -1).gather(-1, ids).sum(-1).numpy(), rtol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
def test_matches_trl_server_distillation_divergence(beta, tail):
    from trl.experimental.server_distillation.server_distillation_trainer import _jsd_divergence

    _, student, ids, lp = _case(seed=2, k=6)
    s = losses.student_logprobs(torch.log_softmax(student.float(), -1), ids, 1.0, tail)
    t = losses.teacher_logprobs(lp.float(), 1.0, tail)
    ours = losses.divergence(s, t, "jsd", beta)
    theirs = _jsd_divergence(s, t, beta).sum(-1)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_chunked_loss_values_and_gradients_match_autograd(tail, chunk):
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(N, 16, generator=g, requires_grad=True)
    weight = torch.randn(V, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (N,), generator=g)
    _, _, ids, lp = _case(seed=3, k=4)
    ids, lp = ids, lp.float()
    opts = KDConfig(kd_weight=0.3, kd_temperature=1.5, divergence="jsd", jsd_beta=0.2, tail=tail, kd_chunk_size=chunk)
    loss, ce_sum, kd_sum, _, _, _ = losses.distill_loss(hidden, weight, labels, ids, lp, opts)
    (loss * 2).backward()
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    ce, kd, _, _ = losses.token_losses(hidden @ weight.T, labels, ids, lp, 1.5, "jsd", 0.2, tail)
    ref = (0.7 * ce + 0.3 * kd).sum()
    (ref * 2).backward()
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce_sum, ce.sum().detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kd_sum, kd.sum().detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0], hidden.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], weight.grad, rtol=1e-4, atol=1e-5)


def _naive_masked(student_logits, top_ids, top_lp, temperature, tail):
    """Forward KL over each row's real candidates only (ids >= 0), float64 numpy."""
    out = []
    for n in range(student_logits.shape[0]):
        keep = top_ids[n].numpy() >= 0
        if not keep.any():
            out.append(0.0)
            continue
        out.append(_naive(student_logits[n:n + 1], top_ids[n:n + 1, keep], top_lp[n:n + 1, keep], temperature,
                          "forward_kl", 0.5, tail)[0])
    return np.array(out)


@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_missing_candidates_count_as_absent(tail, temperature):
    _, student, ids, lp = _case(seed=4, k=5)
    ids = ids.clone()
    ids[0, 2:] = -1  # a cross-tokenizer row: three candidates merged away or unmapped
    ids[1, :] = -1  # a position with no candidate at all
    ids[3, 4] = -1
    lp = lp.masked_fill(ids < 0, float("-inf"))
    _, kd, t_mass, _ = losses.token_losses(student.float(), ids[:, 0].clamp(min=0), ids, lp.float(), temperature,
                                           "forward_kl", 0.5, tail)
    np.testing.assert_allclose(kd.numpy(), _naive_masked(student, ids, lp, temperature, tail), rtol=1e-4, atol=1e-5)
    assert kd[1] == 0 and t_mass[1] == 0 and torch.isfinite(kd).all()


def _naive_alm(label_logprobs, groups, chunk_logprobs, temperature):
    """Binary KL per group, float64 numpy, group by group."""
    out = []
    for g in np.unique(groups):
        at = np.flatnonzero(groups == g)
        t = chunk_logprobs[at[0]]
        if np.isnan(t):
            out.append(0.0)
            continue
        pt, ps = np.exp(t / temperature), np.exp(label_logprobs[at].sum() / temperature)
        out.append(pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps)))
    return np.array(out)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_alm_chunk_loss_equals_naive_binary_kl(temperature):
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(6), [1, 3, 2, 1, 4, 2])
    label_lp = -rng.random(len(groups)) * 2
    chunk = np.repeat(-rng.random(6) * 3, [1, 3, 2, 1, 4, 2])
    chunk[groups == 3] = np.nan  # a one-to-one group: no chunk loss
    got = losses.chunk_losses(torch.tensor(label_lp), torch.tensor(groups), torch.tensor(chunk), temperature)
    np.testing.assert_allclose(got.numpy(), _naive_alm(label_lp, groups, chunk, temperature), rtol=1e-4, atol=1e-6)
    assert got[3] == 0


@pytest.mark.parametrize("mode", ["topk+alm", "topk", "alm"])
@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_cross_tokenizer_chunked_loss_matches_autograd(mode, chunk):
    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(N, 16, generator=g, requires_grad=True)
    weight = torch.randn(V, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (N,), generator=g)
    _, _, ids, lp = _case(seed=6, k=4)
    ids, lp = ids.clone(), lp.float()
    groups = torch.tensor([0, 1, 1, 1, 2, 3, 3])
    ids[[2, 3, 6]] = -1  # only a group's first token carries candidates
    lp = lp.masked_fill(ids < 0, float("-inf"))
    chunk_lp = torch.tensor([float("nan"), -2.0, -2.0, -2.0, float("nan"), -0.7, -0.7])
    opts = KDConfig(kd_weight=0.4, kd_temperature=1.0, tail="bucket", kd_chunk_size=chunk, cross_tokenizer_loss=mode)
    loss, ce_sum, kd_sum, alm_sum, _, _ = losses.distill_loss(hidden, weight, labels, ids, lp, opts, groups, chunk_lp)
    loss.backward()
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    ce, kd, _, _ = losses.token_losses(hidden @ weight.T, labels, ids, lp, 1.0, "forward_kl", 0.5, "bucket")
    alm = losses.chunk_losses(-ce, groups, chunk_lp, 1.0)
    ref = (0.6 * ce).sum() + (0.4 * kd.sum() if "topk" in mode else 0) + (0.4 * alm.sum() if "alm" in mode else 0)
    ref.backward()
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0], hidden.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], weight.grad, rtol=1e-4, atol=1e-5)
    assert (alm_sum > 0) == ("alm" in mode)
    assert losses.chunk_bounds(N, chunk, groups) == {1: [(0, 1), (1, 4), (4, 5), (5, 7)], 3: [(0, 4), (4, 7)],
                                                     100: [(0, 7)]}[chunk]


def _rows(vocab, k, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for prompt_len, completion in ((3, 5), (6, 2), (2, 8)):
        ids = rng.integers(0, vocab, size=(completion, k))
        lps = np.sort(np.log(rng.dirichlet(np.ones(k + 2))[:k]))[::-1].repeat(completion).reshape(k, completion).T
        rows.append({"input_ids": rng.integers(0, vocab, size=prompt_len + completion).tolist(),
                     "prompt_len": prompt_len, "topk_ids": ids.tolist(), "topk_logprobs": lps.tolist()})
    return rows


def _distill_args(k):
    return dict(opts=KDConfig(kd_weight=0.5, kd_chunk_size=4), groups=None, chunk_logprobs=None)


def test_prompt_and_padding_positions_are_ignored(tiny_tokenizer_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make_tiny_llama(tiny_tokenizer_dir, tmp_path / "m"))
    _add_distill_head(model)
    k = 3
    rows = _rows(model.config.vocab_size, k)
    together = collate(0, k)(rows)
    one_by_one = [collate(0, k)([r]) for r in rows]

    def loss_of(batch):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                     distill=dict(topk_ids=batch["topk_ids"], topk_logprobs=batch["topk_logprobs"], **_distill_args(k)))

    total = loss_of(together)[0]
    separate = sum(loss_of(b)[0] for b in one_by_one)
    torch.testing.assert_close(total, separate, rtol=1e-4, atol=1e-4)
    assert (together["labels"][0, :3] == -100).all() and (together["labels"][1, 8:] == -100).all()


def test_two_steps_change_every_parameter_and_lower_kd(tiny_tokenizer_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make_tiny_llama(tiny_tokenizer_dir, tmp_path / "m"))
    _add_distill_head(model)
    k = 3
    batch = collate(0, k)(_rows(model.config.vocab_size, k, seed=1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    kds = []
    for _ in range(3):
        loss, _, kd, _, _, _ = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  labels=batch["labels"], distill=dict(topk_ids=batch["topk_ids"],
                                                                       topk_logprobs=batch["topk_logprobs"],
                                                                       **_distill_args(k)))
        kds.append(kd.item())
        if len(kds) == 3:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []
    assert kds[2] < kds[0]


def test_shared_prefix_gives_the_same_loss_and_gradients(tiny_tokenizer_dir, tmp_path):
    """A batch whose rows start with the same 7 tokens (a tool list): the prefix run once and its
    cache shared must match every row running it, in the loss and in every parameter's gradient."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make_tiny_llama(tiny_tokenizer_dir, tmp_path / "m"))
    _add_distill_head(model)
    k = 3
    prefix = np.random.default_rng(5).integers(0, model.config.vocab_size, size=7).tolist()
    rows = _rows(model.config.vocab_size, k, seed=2)
    for r in rows:
        r["input_ids"], r["prompt_len"] = prefix + r["input_ids"], r["prompt_len"] + 7
    batch = collate(0, k)(rows)
    assert shared_prefix_len(batch["input_ids"], batch["attention_mask"], batch["labels"]) == 7

    def loss_and_grads(shared):
        model.zero_grad()
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                     distill=dict(topk_ids=batch["topk_ids"], topk_logprobs=batch["topk_logprobs"],
                                  shared_prefix=shared, **_distill_args(k)))[0]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    seen = []  # what a hook on the embeddings (NEFTune's) is given: the prefix, then the rows' own tokens
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, out: seen.append(tuple(out.shape)))
    (loss, grads), (ref, ref_grads) = loss_and_grads(True), loss_and_grads(False)
    hook.remove()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    (b, t), width = batch["input_ids"].shape, model.config.hidden_size
    assert seen == [(1, 7, width), (b, t - 7, width), (b, t, width)]


def test_shared_prefix_stops_before_the_first_label_and_at_the_first_difference():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 5, 0], [1, 2, 3, 4, 7, 7]])
    attention = torch.tensor([[1] * 6, [1] * 5 + [0], [1] * 6])
    labels = torch.full_like(ids, -100)
    labels[:, 5:] = ids[:, 5:]
    assert shared_prefix_len(ids, attention, labels) == 3  # row 1 differs at 3
    labels[0, 2] = 2  # a label at 2 is predicted by hidden state 1: only token 0 may be shared
    assert shared_prefix_len(ids, attention, labels) == 1
    assert shared_prefix_len(ids[:1], attention[:1], labels[:1]) == 0  # one row: nothing to share
    padded = attention.clone()
    padded[1, 2:] = 0
    labels[0, 2] = -100
    assert shared_prefix_len(ids, padded, labels) == 2  # padding is never shared
