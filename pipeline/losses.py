"""Distillation losses on the teacher's stored top-k: pure tensor functions.

Shapes: N positions (completion tokens only), V vocabulary, k stored candidates, H hidden size,
G groups (cross-tokenizer only).

The teacher's stored logprobs are raw (T=1). Both sides are compared on the same support:
- tail="renormalize": the k candidates, each side renormalized over them;
- tail="bucket": the k candidates plus one bucket holding 1 - (their mass), per side.
That k- or (k+1)-way distribution is then re-tempered (divided by T, renormalized) on both sides
and the divergence is scaled by T**2 (Hinton et al.), so gradients keep their size across T.
With k = V and tail="renormalize", this is exactly the full-vocabulary divergence.

A candidate id below 0 is no candidate (a cross-tokenizer row holds fewer than k once teacher
tokens are mapped into the student's vocabulary and merged): it gets no probability on either
side. Across tokenizers, groups of tokens that spell the same bytes also get the ALM chunk loss
(approximate likelihood matching, Minixhofer et al. 2025): a binarised KL between the teacher's
and the student's probability of the group's bytes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Stands in for log(0) on masked candidates: exp() of it is exactly 0 in float32, and unlike
# -inf it keeps every product and gradient finite.
MASKED = -1e9
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
TAILS = ("renormalize", "bucket")


def _with_tail(logprobs: torch.Tensor) -> torch.Tensor:
    """[N, k] logprobs -> [N, k+1]: the last entry is log(1 - sum(exp(logprobs)))."""
    mass = torch.logsumexp(logprobs, dim=-1, keepdim=True).clamp(max=-1e-7)  # keep 1 - mass > 0
    return torch.cat([logprobs, torch.log(-torch.expm1(mass))], dim=-1)


def teacher_logprobs(topk_logprobs: torch.Tensor, temperature: float, tail: str,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """Stored raw top-k logprobs [N, k] -> the teacher's target logprobs [N, k] or [N, k+1].
    `valid` [N, k] bool marks real candidates (None: all)."""
    lp = topk_logprobs.float()
    if valid is not None:
        lp = lp.masked_fill(~valid, MASKED)
    if tail == "bucket":
        lp = _with_tail(lp)
    return torch.log_softmax(lp / temperature, dim=-1)


def student_logprobs(log_probs: torch.Tensor, topk_ids: torch.Tensor, temperature: float, tail: str,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """The student's log-probabilities [N, V] (log_softmax of its logits: the one CE uses, so the
    vocabulary-wide softmax is paid once) and the teacher's top-k ids [N, k] (>= 0 where `valid`)
    -> the student's logprobs on the same support as teacher_logprobs."""
    ids = topk_ids if valid is None else topk_ids.clamp(min=0)
    if tail == "renormalize":  # a softmax over k ignores the shift from logits to log-probs
        z = log_probs.gather(-1, ids) / temperature
        return torch.log_softmax(z if valid is None else z.masked_fill(~valid, MASKED), dim=-1)
    lp = log_probs.gather(-1, ids)
    if valid is not None:
        lp = lp.masked_fill(~valid, MASKED)
    return torch.log_softmax(_with_tail(lp) / temperature, dim=-1)


def divergence(student: torch.Tensor, teacher: torch.Tensor, kind: str, beta: float = 0.5) -> torch.Tensor:
    """Per-position divergence [N] between two logprob tensors [N, m] on the same support.

    forward_kl = KL(teacher || student) (mean-seeking, the classic KD loss); reverse_kl =
    KL(student || teacher) (mode-seeking); jsd = generalized Jensen-Shannon with mixture
    beta * teacher + (1 - beta) * student, equal to forward KL at beta=0 and reverse at beta=1
    (as in TRL's GKD).
    """
    if kind == "forward_kl" or (kind == "jsd" and beta == 0):
        return (teacher.exp() * (teacher - student)).sum(-1)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1):
        return (student.exp() * (student - teacher)).sum(-1)
    if kind != "jsd":
        raise ValueError(f"unknown divergence {kind!r} (known: {', '.join(DIVERGENCES)})")
    mixture = torch.logsumexp(torch.stack([student + torch.log1p(torch.tensor(-beta)),
                                           teacher + torch.log(torch.tensor(beta))]), dim=0)
    return beta * (teacher.exp() * (teacher - mixture)).sum(-1) + (1 - beta) * (student.exp() * (student - mixture)).sum(-1)


def token_losses(logits: torch.Tensor, labels: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                 temperature: float = 1.0, kind: str = "forward_kl", beta: float = 0.5, tail: str = "bucket"):
    """Per-position losses for N completion positions.

    logits [N, V], labels [N] (the student's next token), topk_ids [N, k] int64 (< 0: no
    candidate), topk_logprobs [N, k] -> ce [N], kd [N] (already scaled by T**2), teacher_mass [N]
    (the top-k's share of the teacher's probability) and student_mass [N] (the student's
    probability on the teacher's top-k, at T=1). A position without candidates has kd 0.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    ce = -log_probs.gather(-1, labels[:, None]).squeeze(-1)
    valid = topk_ids >= 0
    kd = divergence(student_logprobs(log_probs, topk_ids, temperature, tail, valid),
                    teacher_logprobs(topk_logprobs, temperature, tail, valid), kind, beta) * temperature**2
    with torch.no_grad():
        teacher_mass = topk_logprobs.float().exp().masked_fill(~valid, 0).sum(-1)
        student_mass = log_probs.gather(-1, topk_ids.clamp(min=0)).exp().masked_fill(~valid, 0).sum(-1)
    return ce, kd, teacher_mass, student_mass


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of log(1/2)."""
    return torch.where(x < -0.693, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def binary_kl(teacher: torch.Tensor, student: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """ALM's binarised divergence [G]: KL(Bernoulli(p_t) || Bernoulli(p_s)) where log p = the
    chunk log-probability [G] / temperature; both are clamped just below 0 (a certain chunk)."""
    t = (teacher.float() / temperature).clamp(max=-1e-6)
    s = (student.float() / temperature).clamp(max=-1e-6)
    return t.exp() * (t - s) + (-torch.expm1(t)) * (_log1mexp(t) - _log1mexp(s))


def chunk_losses(label_logprobs: torch.Tensor, groups: torch.Tensor, chunk_logprobs: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """ALM over N positions: label_logprobs [N] (the student's logprob of each of its tokens),
    groups [N] int64 (a group's positions are contiguous and share one id), chunk_logprobs [N] (the
    teacher's log-probability of the position's group, NaN for groups without the loss) -> [G]
    binarised KL per group, 0 for groups without it. The student's group log-probability is the
    sum of its tokens' logprobs."""
    first = torch.ones_like(groups, dtype=torch.bool)
    first[1:] = groups[1:] != groups[:-1]
    index = first.cumsum(0) - 1
    student = torch.zeros(int(first.sum()), dtype=torch.float32, device=label_logprobs.device)
    student = student.index_add(0, index, label_logprobs.float())
    teacher = chunk_logprobs[first].float()
    keep = ~torch.isnan(teacher)
    return torch.where(keep, binary_kl(torch.where(keep, teacher, -1.0), student, temperature), 0.0)


class ChunkedDistillLoss(torch.autograd.Function):
    """sum over N positions of (1 - w) * CE + w * KD (+ w * ALM per group across tokenizers), from
    hidden states [N, H] and the LM head weight [V, H], projecting about `kd_chunk_size` positions
    at a time (a chunk ends on a group boundary, so every group's loss is computed whole).

    The gradients are computed chunk by chunk inside forward, so no [N, V] tensor is ever kept:
    peak memory is one chunk's logits, whatever N is, and the work is the same as one forward
    and one backward through the head (no recomputation). Returns (loss_sum, ce_sum, kd_sum,
    alm_sum, teacher_mass_sum, student_mass_sum); only loss_sum carries gradients.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, topk_ids, topk_logprobs, groups, chunk_logprobs, opts):
        w, T = opts.kd_weight, opts.kd_temperature
        cross = groups is not None
        use_topk = not cross or "topk" in opts.cross_tokenizer_loss
        use_alm = cross and "alm" in opts.cross_tokenizer_loss
        grad_hidden = torch.zeros_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        sums = torch.zeros(6, dtype=torch.float32, device=hidden.device)
        for start, end in chunk_bounds(hidden.shape[0], opts.kd_chunk_size, groups):
            h = hidden[start:end]
            with torch.enable_grad():
                logits = F.linear(h, weight).detach().float().requires_grad_()
                if w == 0:  # CE only: no top-k work (bench train's baseline for what KD itself costs)
                    ce = -torch.log_softmax(logits, dim=-1).gather(-1, labels[start:end, None]).squeeze(-1)
                    kd = t_mass = s_mass = torch.zeros_like(ce)
                else:
                    ce, kd, t_mass, s_mass = token_losses(logits, labels[start:end], topk_ids[start:end],
                                                          topk_logprobs[start:end], T, opts.divergence, opts.jsd_beta,
                                                          opts.tail)
                loss = ((1 - w) * ce + (w * kd if use_topk else 0)).sum()
                alm = chunk_losses(-ce, groups[start:end], chunk_logprobs[start:end], T).sum() if use_alm \
                    else torch.zeros((), device=h.device)
                loss = loss + w * alm
                (grad_logits,) = torch.autograd.grad(loss, logits)
            grad_logits = grad_logits.to(h.dtype)
            grad_hidden[start:end] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += (grad_logits.T @ h).float()
            sums += torch.stack([loss.detach(), ce.sum().detach(), kd.sum().detach(), alm.detach(), t_mass.sum(),
                                 s_mass.sum()])
        ctx.save_for_backward(grad_hidden, grad_weight if grad_weight is not None else torch.empty(0))
        ctx.weight_grad = grad_weight is not None
        ctx.weight_dtype = weight.dtype
        outputs = tuple(sums[i].clone() for i in range(6))
        ctx.mark_non_differentiable(*outputs[1:])
        return outputs

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_w = (grad_weight * grad_loss).to(ctx.weight_dtype) if ctx.weight_grad else None
        return (grad_hidden * grad_loss.to(grad_hidden.dtype), grad_w) + (None,) * 6


def chunk_bounds(n: int, chunk: int, groups: torch.Tensor | None) -> list[tuple[int, int]]:
    """[start, end) slices of about `chunk` positions; with groups [N], a slice ends where a group does."""
    if groups is None:
        return [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    ends = (torch.nonzero(groups[1:] != groups[:-1]).flatten() + 1).tolist() + [n]
    out, start = [], 0
    for end in ends:
        if end - start >= chunk or end == n:
            out.append((start, end))
            start = end
    return out


def distill_loss(hidden, weight, labels, topk_ids, topk_logprobs, opts, groups=None, chunk_logprobs=None):
    """Summed loss and statistics over N positions; see ChunkedDistillLoss. `opts` carries the KD
    fields of the train config (kd_weight, kd_temperature, divergence, jsd_beta, tail,
    kd_chunk_size, cross_tokenizer_loss) under their config names; `groups` and `chunk_logprobs`
    [N] are given across tokenizers only."""
    if hidden.shape[0] == 0:  # no completion token in this micro-batch: a zero that is still part of the graph
        zero = hidden.sum() * 0 + weight.sum() * 0
        return (zero,) + tuple(torch.zeros((), device=hidden.device) for _ in range(5))
    return ChunkedDistillLoss.apply(hidden, weight, labels, topk_ids.long(), topk_logprobs, groups, chunk_logprobs,
                                    opts)
