"""Distillation losses on the teacher's stored top-k: pure tensor functions.

Shapes: N positions (completion tokens only), V vocabulary, k stored candidates, H hidden size.

The teacher's stored logprobs are raw (T=1). Both sides are compared on the same support:
- tail="renormalize": the k candidates, each side renormalized over them;
- tail="bucket": the k candidates plus one bucket holding 1 - (their mass), per side.
That k- or (k+1)-way distribution is then re-tempered (divided by T, renormalized) on both sides
and the divergence is scaled by T**2 (Hinton et al.), so gradients keep their size across T.
With k = V and tail="renormalize", this is exactly the full-vocabulary divergence.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
TAILS = ("renormalize", "bucket")


def _with_tail(logprobs: torch.Tensor) -> torch.Tensor:
    """[N, k] logprobs -> [N, k+1]: the last entry is log(1 - sum(exp(logprobs)))."""
    mass = torch.logsumexp(logprobs, dim=-1, keepdim=True).clamp(max=-1e-7)  # keep 1 - mass > 0
    return torch.cat([logprobs, torch.log(-torch.expm1(mass))], dim=-1)


def teacher_logprobs(topk_logprobs: torch.Tensor, temperature: float, tail: str) -> torch.Tensor:
    """Stored raw top-k logprobs [N, k] -> the teacher's target logprobs [N, k] or [N, k+1]."""
    lp = topk_logprobs.float()
    if tail == "bucket":
        lp = _with_tail(lp)
    return torch.log_softmax(lp / temperature, dim=-1)


def student_logprobs(logits: torch.Tensor, topk_ids: torch.Tensor, temperature: float, tail: str) -> torch.Tensor:
    """Student logits [N, V] and the teacher's top-k ids [N, k] -> the student's logprobs on the
    same support as teacher_logprobs."""
    logits = logits.float()
    if tail == "renormalize":
        return torch.log_softmax(logits.gather(-1, topk_ids) / temperature, dim=-1)
    lp = torch.log_softmax(logits, dim=-1).gather(-1, topk_ids)
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

    logits [N, V], labels [N] (the teacher's token), topk_ids [N, k] int64, topk_logprobs [N, k]
    -> ce [N], kd [N] (already scaled by T**2), teacher_mass [N] (the top-k's share of the teacher's
    probability) and student_mass [N] (the student's probability on the teacher's top-k, at T=1).
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    ce = -log_probs.gather(-1, labels[:, None]).squeeze(-1)
    kd = divergence(student_logprobs(logits, topk_ids, temperature, tail),
                    teacher_logprobs(topk_logprobs, temperature, tail), kind, beta) * temperature**2
    with torch.no_grad():
        teacher_mass = topk_logprobs.float().exp().sum(-1)
        student_mass = log_probs.gather(-1, topk_ids).exp().sum(-1)
    return ce, kd, teacher_mass, student_mass


class ChunkedDistillLoss(torch.autograd.Function):
    """sum over N positions of (1 - w) * CE + w * KD, from hidden states [N, H] and the LM head
    weight [V, H], projecting `chunk` positions at a time.

    The gradients are computed chunk by chunk inside forward, so no [N, V] tensor is ever kept:
    peak memory is one chunk's logits, whatever N is, and the work is the same as one forward
    and one backward through the head (no recomputation). Returns (loss_sum, ce_sum, kd_sum,
    teacher_mass_sum, student_mass_sum); only loss_sum carries gradients.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, topk_ids, topk_logprobs, kd_weight, temperature, kind, beta, tail,
                chunk):
        grad_hidden = torch.zeros_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        sums = torch.zeros(5, dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start:start + chunk]
            with torch.enable_grad():
                logits = F.linear(h, weight).detach().float().requires_grad_()
                ce, kd, t_mass, s_mass = token_losses(logits, labels[start:start + chunk],
                                                      topk_ids[start:start + chunk],
                                                      topk_logprobs[start:start + chunk], temperature, kind, beta, tail)
                loss = ((1 - kd_weight) * ce + kd_weight * kd).sum()
                (grad_logits,) = torch.autograd.grad(loss, logits)
            grad_logits = grad_logits.to(h.dtype)
            grad_hidden[start:start + chunk] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += (grad_logits.T @ h).float()
            sums += torch.stack([loss.detach(), ce.sum().detach(), kd.sum().detach(), t_mass.sum(), s_mass.sum()])
        ctx.save_for_backward(grad_hidden, grad_weight if grad_weight is not None else torch.empty(0))
        ctx.weight_grad = grad_weight is not None
        ctx.weight_dtype = weight.dtype
        outputs = tuple(sums[i].clone() for i in range(5))
        ctx.mark_non_differentiable(*outputs[1:])
        return outputs

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_w = (grad_weight * grad_loss).to(ctx.weight_dtype) if ctx.weight_grad else None
        return (grad_hidden * grad_loss.to(grad_hidden.dtype), grad_w) + (None,) * 9


def distill_loss(hidden, weight, labels, topk_ids, topk_logprobs, kd_weight=0.5, temperature=1.0,
                 kind="forward_kl", beta=0.5, tail="bucket", chunk=1024):
    """Summed loss and statistics over N positions; see ChunkedDistillLoss."""
    if hidden.shape[0] == 0:  # no completion token in this micro-batch: a zero that is still part of the graph
        zero = hidden.sum() * 0 + weight.sum() * 0
        return (zero,) + tuple(torch.zeros((), device=hidden.device) for _ in range(4))
    return ChunkedDistillLoss.apply(hidden, weight, labels, topk_ids.long(), topk_logprobs, kd_weight, temperature,
                                    kind, beta, tail, chunk)
