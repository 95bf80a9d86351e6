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


def sampling_of(prompt: dict, gen) -> tuple[float, float]:
    """(temperature, top_p) for a prompt: the preset's for train, the raw distribution's for eval
    (generate.eval_temperature / eval_top_p), whose traces measure fidelity."""
    return (gen.eval_temperature, gen.eval_top_p) if prompt["split"] == "eval" else (gen.temperature, gen.top_p)


def flat_to_arrays(lp, k: int, first: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """vLLM FlatLogprobs -> (sampled logprob [P], top-k ids [P, k], top-k logprobs [P, k]) for the
    positions from `first` on. Each position holds the sampled (or, for prompt logprobs, the given)
    token first with its true rank, then the top k."""
    start = lp.start_indices[first] if first < len(lp.start_indices) else len(lp.token_ids)
    ids = np.asarray(lp.token_ids[start:], dtype=np.int64)
    vals = np.asarray(lp.logprobs[start:], dtype=np.float32)
    positions = len(lp.start_indices) - first
    if len(ids) != positions * (k + 1):
        raise PipelineError(f"vLLM returned {len(ids)} logprob entries for {positions} positions, expected k+1={k + 1} each")
    ids, vals = ids.reshape(positions, k + 1), vals.reshape(positions, k + 1)
    return vals[:, 0].copy(), ids[:, 1:].copy(), vals[:, 1:].copy()


def start_llm(model: str, **args):
    """vllm.LLM(model, **args), or a one-line error saying why it did not start and what to set."""
    import os

    from vllm import LLM

    try:
        return LLM(model=model, **args)
    except (ValueError, TypeError) as e:
        detail = " ".join(str(e).split())[:400]  # pydantic puts the useful part on later lines
        raise PipelineError(f"vLLM refused the engine arguments: {detail}") from None
    except Exception as e:  # noqa: BLE001 - memory, devices and spawned workers fail in many types
        import psutil

        free = psutil.virtual_memory().available / 2**30
        kv = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "unset")
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise PipelineError(f"the vLLM engine for {model} did not start ({type(e).__name__}: {first}); "
                            f"{free:.1f} GiB memory free, VLLM_CPU_KVCACHE_SPACE={kv} GiB on CPU: lower it, "
                            "or generate.engine.gpu_memory_utilization / max_model_len on GPUs") from None


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
    def __init__(self, model_path: str, cfg: Config, llm=None, score: bool = False):
        self.cfg = cfg
        if llm is None:
            # Scoring samples nothing (no seeds); its prompt logprobs allocate [tokens x vocab]
            # floats per step, so the step's token budget is what bounds memory.
            extra = ({"max_num_batched_tokens": cfg.generate.score_batch_tokens, "enable_prefix_caching": False}
                     if score else cpu_seed_workaround(cfg))
            llm = start_llm(model_path, **{**engine_args(cfg), **extra})
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
        from pipeline.generate import prompt_seed

        g = self.cfg.generate

        def request(prompt, ids):
            seed = prompt_seed(self.cfg.run.seed, prompt["prompt_id"], g.n) if g.per_request_seed else None
            params = self.sampling_params(seed)
            params.max_tokens = min(g.max_new_tokens, g.engine.max_model_len - len(ids))
            params.temperature, params.top_p = sampling_of(prompt, g)
            return ids, params, seed

        def completions(out, ids, seed, latency):
            return [Completion(list(c.token_ids), *flat_to_arrays(c.logprobs, g.top_k), c.finish_reason,
                               None if seed is None else seed + c.index, latency)
                    for c in sorted(out.outputs, key=lambda c: c.index)]

        yield from self._drive(todo, request, completions)

    def score(self, todo: Iterable[tuple[dict, str, list[int], list[int]]]) -> Iterator[tuple[dict, str, list[int], list]]:
        """Teacher forcing: (prompt, text, prompt ids, completion ids) -> the teacher's logprobs at
        every completion token, from one request of prompt + completion with max_tokens=1 and
        prompt_logprobs=k. Nothing is sampled."""
        from vllm import SamplingParams

        g = self.cfg.generate
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=g.top_k, flat_logprobs=True,
                                detokenize=False)
        params.output_kind = self.sampling_params(None).output_kind

        def request(prompt, ids_and_completion):
            ids, completion = ids_and_completion
            return ids + completion, params, None

        def completions(out, ids_and_completion, seed, latency):
            ids, completion = ids_and_completion
            sampled, top_ids, top_lp = flat_to_arrays(out.prompt_logprobs, g.top_k, first=len(ids))
            return [Completion(completion, sampled, top_ids, top_lp, "scored", None, latency)]

        items = ((p, text, (ids, completion)) for p, text, ids, completion in todo)
        for prompt, text, (ids, _), done in self._drive(items, request, completions):
            yield prompt, text, ids, done

    def _drive(self, todo, request, completions):
        """Feed the engine at most max_in_flight prompts; yield (prompt, text, payload, completions)
        as requests finish. `request(prompt, payload)` -> (token ids, params, seed);
        `completions(output, payload, seed, latency)` -> [Completion]."""
        from vllm.inputs import TokensPrompt

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
                prompt, text, payload = item
                token_ids, params, seed = request(prompt, payload)
                self.engine.add_request(prompt["prompt_id"], TokensPrompt(prompt_token_ids=token_ids), params)
                in_flight[prompt["prompt_id"]] = (prompt, text, payload, seed, time.time())
            if not in_flight:
                return
            for out in self.engine.step():
                if not out.finished:
                    continue
                prompt, text, payload, seed, t0 = in_flight.pop(out.request_id)
                yield prompt, text, payload, completions(out, payload, seed, time.time() - t0)


class OpenAITeacher:
    """Any OpenAI-compatible /v1/completions endpoint (a `vllm serve` of R1 on another node).

    Prompts go as token ids, so the stored prompt ids are exactly what the server saw; candidates
    come back as "token_id:N" (`return_tokens_as_token_ids`). Bounded concurrency; 429, 5xx and
    timeouts are retried with exponential backoff."""

    RETRY_STATUS = {429, 500, 502, 503, 504}

    def __init__(self, cfg: Config):
        import os

        self.cfg = cfg
        o = cfg.generate.openai
        self.url = o.base_url.rstrip("/") + "/completions"
        self.headers = {"Content-Type": "application/json"}
        if os.environ.get(o.api_key_env):
            self.headers["Authorization"] = f"Bearer {os.environ[o.api_key_env]}"
        self.model = o.model or self._first_model(o.base_url.rstrip("/") + "/models")

    def _post(self, url: str, body: dict | None) -> dict:
        import json
        import urllib.error
        import urllib.request

        o = self.cfg.generate.openai
        for attempt in range(o.max_retries + 1):
            data = None if body is None else json.dumps(body).encode()
            req = urllib.request.Request(url, data=data, headers=self.headers, method="GET" if body is None else "POST")
            try:
                with urllib.request.urlopen(req, timeout=o.timeout_s) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                if e.code not in self.RETRY_STATUS or attempt == o.max_retries:
                    detail = e.read().decode(errors="replace")[:200].replace("\n", " ")
                    raise PipelineError(f"{url}: HTTP {e.code}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == o.max_retries:
                    raise PipelineError(f"{url}: {getattr(e, 'reason', e)} after {attempt + 1} tries") from None
            time.sleep(min(60.0, 0.5 * 2 ** attempt))
        raise AssertionError("unreachable")

    def _first_model(self, url: str) -> str:
        models = self._post(url, None).get("data") or []
        if not models:
            raise PipelineError(f"{url}: the server lists no models; set generate.openai.model")
        return models[0]["id"]

    def _one(self, prompt: dict, text: str, ids: list[int]):
        from pipeline.generate import prompt_seed

        g = self.cfg.generate
        seed = prompt_seed(self.cfg.run.seed, prompt["prompt_id"], g.n) if g.per_request_seed else None
        temperature, top_p = sampling_of(prompt, g)
        body = {"model": self.model, "prompt": ids, "n": g.n, "temperature": temperature, "top_p": top_p,
                "max_tokens": min(g.max_new_tokens, g.engine.max_model_len - len(ids)), "logprobs": g.top_k,
                "return_tokens_as_token_ids": True, "skip_special_tokens": False}
        if seed is not None:
            body["seed"] = seed
        t0 = time.time()
        reply = self._post(self.url, body)
        latency = time.time() - t0
        completions = []
        for choice in sorted(reply["choices"], key=lambda c: c["index"]):
            lp = choice["logprobs"]
            token_ids = [int(t.split(":", 1)[1]) for t in lp["tokens"]]
            top = [sorted(((int(t.split(":", 1)[1]), v) for t, v in d.items()), key=lambda x: -x[1])[:g.top_k]
                   for d in lp["top_logprobs"]]
            if any(len(row) < g.top_k for row in top):
                raise PipelineError(f"{self.url}: fewer than top_k={g.top_k} candidates returned; the server's "
                                    "--max-logprobs must be at least top_k")
            completions.append(Completion(
                token_ids, np.asarray(lp["token_logprobs"], dtype=np.float32),
                np.asarray([[i for i, _ in row] for row in top], dtype=np.int64),
                np.asarray([[v for _, v in row] for row in top], dtype=np.float32),
                choice["finish_reason"], None if seed is None else seed + choice["index"], latency))
        return prompt, text, ids, completions

    def generate(self, todo: Iterable[tuple[dict, str, list[int]]]) -> Iterator[tuple[dict, str, list[int], list]]:
        """Like VLLMTeacher.generate: at most `concurrency` requests open, yielded as they finish."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        limit = self.cfg.generate.openai.concurrency
        pending = iter(todo)
        with ThreadPoolExecutor(limit) as pool:
            running = set()
            while True:
                while len(running) < limit and (item := next(pending, None)) is not None:
                    running.add(pool.submit(self._one, *item))
                if not running:
                    return
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    yield f.result()
