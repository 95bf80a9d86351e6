"""generate.backend: openai-chat against local stub chat APIs (the DeepSeek API's replies, `<think>`
in the content, retries, the API key, text-only runs) and, as `real_server`, a real vLLM server's
/v1/chat/completions with logprobs."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline import config, topk
from pipeline.cli import main
from pipeline.config import ConfigError
from pipeline.engine import ServedTeacher
from pipeline.generate import prompt_seed
from pipeline.toolcalls import Call, parse_calls
from tests.conftest import write_config
from tests.test_generate_openai import server  # noqa: F401 - the real vLLM server, started as that test starts it

KEY = "sk-stub-5f0c2e9d7a1b"  # must reach the server as a Bearer token and appear in no output file
QUESTIONS = ["What is 2+3?", "What is 7-4?", "What is 6*2?"]
TOOLS = [{"name": "open_window", "description": "Open a window",
          "parameters": {"type": "object", "properties": {"side": {"type": "string"}}}}]


class ChatStub:
    """A chat API on 127.0.0.1, served one request at a time from a thread that stops by itself:
    after `limit` requests, after `seconds`, or when the test leaves the `with` block.
    `answer(body, requests)` -> (HTTP status, JSON reply); `requests` holds (Authorization header,
    body) of every POST so far, this one last."""

    def __init__(self, answer, limit: int = 50, seconds: float = 120):
        self.requests: list[tuple[str | None, dict]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((self.headers.get("Authorization"), body))
                status, reply = answer(body, stub.requests)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.timeout = 0.2  # handle_request returns this often to look at the stop conditions
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(limit, time.time() + seconds), daemon=True)
        self.thread.start()

    def _serve(self, limit: int, deadline: float) -> None:
        while not self.stop.is_set() and len(self.requests) < limit and time.time() < deadline:
            self.httpd.handle_request()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _reply(body: dict, choices: list[dict], usage: dict | None = None) -> dict:
    return {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": i, "logprobs": None, **c} for i, c in enumerate(choices)],
            "usage": usage or {"prompt_tokens": 9, "completion_tokens": 99, "total_tokens": 108}}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """One artifacts directory for the module's runs: the models stage's pruned student is built once."""
    return tmp_path_factory.mktemp("chat") / "artifacts"


def _run(tmp_path: Path, artifacts: Path, teacher: Path, name: str, generate: str,
         tools: bool = True) -> tuple[Path, Path]:
    """Config and run directory of a run whose prompts are QUESTIONS (train, with a system
    prompt), one eval question and, with `tools`, one train prompt with bare tool definitions;
    models and prepare done."""
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS))
    (tmp_path / "e.jsonl").write_text(json.dumps({"prompt": "What is 9+9?"}) + "\n")
    (tmp_path / "t.jsonl").write_text(json.dumps({"prompt": "Open the left window", "tools": TOOLS}) + "\n")
    tool_input = f"- {{path: {tmp_path / 't.jsonl'}, tools: tools, task: tool}}" if tools else ""
    cfg = write_config(tmp_path / f"{name}.yaml", f"""
        run: {{name: {name}, artifacts_dir: {artifacts}}}
        models: {{teacher: {teacher}, student_layers: [0], dtype: float32}}
        prepare:
          inputs:
            - {{path: {tmp_path / 'q.jsonl'}, system_prompt: "Answer briefly."}}
            - {{path: {tmp_path / 'e.jsonl'}, split: eval}}
            {tool_input}
        generate:
          backend: openai-chat
          max_new_tokens: 64
          top_k: 5
          engine: {{max_model_len: 256}}
        """ + generate)
    for stage in ("models", "prepare"):
        result = CliRunner().invoke(main, [stage, str(cfg)])
        assert result.exit_code == 0, result.output
    return cfg, artifacts / name


def _generations(run_dir: Path) -> list[dict]:
    return pq.read_table(run_dir / "generate/generations").to_pylist()


def _user(body: dict) -> str:
    return body["messages"][-1]["content"]


def test_deepseek_api_reasoning_content_retries_and_a_text_only_run(tmp_path, artifacts, tiny_teacher_dir,
                                                                   monkeypatch):
    """The DeepSeek API: reasoning_content beside content, usage with reasoning_tokens, no
    logprobs (asking for them is an error there), 429 twice for one request."""
    successes = []

    def deepseek(body, requests):
        if "logprobs" in body or "top_logprobs" in body:
            return 400, {"error": {"message": "deepseek-reasoner does not support logprobs"}}
        if _user(body) == _user(requests[0][1]) and sum(_user(b) == _user(body) for _, b in requests) <= 2:
            return 429, {"error": {"message": "Rate limit reached"}}
        successes.append(body)
        if len(successes) == 2:  # reasoning cut at max_tokens: no content
            return 200, _reply(body, [{"message": {"role": "assistant", "content": "", "reasoning_content":
                                                   "Still thinking about " + _user(body)}, "finish_reason": "length"}])
        return 200, _reply(body, [{"message": {"role": "assistant", "content": "\\boxed{5}",
                                               "reasoning_content": "Thinking about " + _user(body)},
                                   "finish_reason": "stop"}],
                           {"prompt_tokens": 30, "completion_tokens": 17, "total_tokens": 47,
                            "completion_tokens_details": {"reasoning_tokens": 11}})

    (tmp_path / "ctx.json").write_text(json.dumps([
        {"role": "system", "content": "CTX system"}, {"role": "user", "content": "Example: 1+1?"},
        {"role": "assistant", "content": "2"}]))
    monkeypatch.setenv("STUB_DEEPSEEK_KEY", KEY)
    with ChatStub(deepseek) as stub:
        cfg, run_dir = _run(tmp_path, artifacts, tiny_teacher_dir, "ds", f"""
          preset: deepseek-r1
          teacher_context: {tmp_path / 'ctx.json'}
          openai: {{base_url: "{stub.url}", model: deepseek-reasoner, api_key_env: STUB_DEEPSEEK_KEY,
                    logprobs: false, concurrency: 2}}
        """)
        result = CliRunner().invoke(main, ["generate", str(cfg)])
        assert result.exit_code == 0, result.output
        posts = len(stub.requests)
        rerun = CliRunner().invoke(main, ["generate", str(cfg)])  # resumes: everything is on disk
        assert rerun.exit_code == 0, rerun.output
        assert len(stub.requests) == posts

    gens = _generations(run_dir)
    assert len(gens) == 5 and posts == 5 + 2  # one request answered 429 twice, then retried to success
    first = [b for _, b in stub.requests if _user(b) == _user(stub.requests[0][1])]
    assert len(first) == 3 and first[0] == first[1] == first[2]
    assert all(auth == f"Bearer {KEY}" for auth, _ in stub.requests)

    prompts = {p["prompt_id"]: p for p in pq.read_table(run_dir / "prepare/prompts.parquet").to_pylist()}
    for _, body in stub.requests:
        # the teacher-only context, with every system message dropped (deepseek-r1 has none)
        assert body["messages"][:2] == [{"role": "user", "content": "Example: 1+1?"},
                                        {"role": "assistant", "content": "2"}]
        assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
        assert body["model"] == "deepseek-reasoner" and body["n"] == 1 and body["max_tokens"] <= 64
    by_question = {_user(b): b for _, b in stub.requests}
    for g in gens:
        prompt = prompts[g["prompt_id"]]
        body = by_question[prompt["messages"][-1]["content"]]
        assert body["seed"] == prompt_seed(0, g["prompt_id"], 1) == g["seed"]
        assert (body["temperature"], body["top_p"]) == ((1.0, 1.0) if prompt["split"] == "eval" else (0.6, 0.95))
        if prompt["tools"]:
            assert body["tools"] == [{"type": "function", "function": TOOLS[0]}]
        else:
            assert "tools" not in body

    cut = [g for g in gens if g["finish_reason"] == "length"]
    assert len(cut) == 1 and not cut[0]["reasoning_closed"] and cut[0]["answer"] == ""
    assert cut[0]["reasoning"].startswith("Still thinking about ")
    for g in gens:
        if g is cut[0]:
            continue
        question = prompts[g["prompt_id"]]["messages"][-1]["content"]
        assert (g["reasoning"], g["answer"]) == ("Thinking about " + question, "\\boxed{5}")
        assert g["reasoning_closed"] and g["think_end_count"] == 1 and g["finish_reason"] == "stop"
        assert (g["completion_tokens"], g["reasoning_tokens"], g["think_end_index"]) == (17, 11, 11)  # from usage

    assert not (run_dir / "generate/teacher_topk").exists()
    m = json.loads((run_dir / "generate/manifest.json").read_text())
    assert m["counts"]["text_only"] is True and m["settings"]["topk"] is False
    assert json.loads((run_dir / "generate/settings.json").read_text())["topk"] is False
    assert "training on it will be SFT" in result.output
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not leaked and KEY not in result.output + rerun.output


def test_think_tags_in_the_content_tool_calls_and_unreturned_logprobs(tmp_path, artifacts, tiny_teacher_dir):
    """A server that ignores the logprobs it was asked for and keeps the reasoning in the content,
    with and without the opening <think>; n=2, so usage (the request's sum) gives no counts."""
    call = {"id": "call_0", "type": "function", "function": {"name": "open_window", "arguments": '{"side": "left"}'}}

    def thinking(body, requests):
        if body.get("tools"):
            return 200, _reply(body, [{"message": {"role": "assistant", "content": None, "tool_calls": [call]},
                                       "finish_reason": "tool_calls"}] * body["n"])
        q = _user(body)
        return 200, _reply(body, [{"message": {"role": "assistant", "content": f"<think>r0 {q}</think>a0"},
                                   "finish_reason": "stop"},
                                  {"message": {"role": "assistant", "content": f"r1 {q}</think>a1"},
                                   "finish_reason": "stop"}])

    with ChatStub(thinking) as stub:
        cfg, run_dir = _run(tmp_path, artifacts, tiny_teacher_dir, "th", f"""
          n: 2
          openai: {{base_url: "{stub.url}", model: stub}}
        """)
        result = CliRunner().invoke(main, ["generate", str(cfg)])
    assert result.exit_code == 0, result.output
    assert len(stub.requests) == 5
    for auth, body in stub.requests:
        assert auth is None  # no key in the environment: no Authorization header
        assert (body["logprobs"], body["top_logprobs"], body["return_tokens_as_token_ids"]) == (True, 6, True)
        if not body.get("tools"):
            roles = [m["role"] for m in body["messages"]]  # the default preset keeps the system prompt
            assert roles == (["system", "user"] if _user(body) in QUESTIONS else ["user"])

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    prompts = {p["prompt_id"]: p for p in pq.read_table(run_dir / "prepare/prompts.parquet").to_pylist()}
    gens = _generations(run_dir)
    assert len(gens) == 10
    for g in gens:
        prompt = prompts[g["prompt_id"]]
        if prompt["tools"]:
            assert g["reasoning"] == "" and g["finish_reason"] == "tool_calls"
            assert parse_calls(g["answer"]) == [Call("open_window", {"side": "left"})]
            continue
        i, q = g["sample_idx"], prompt["messages"][-1]["content"]
        assert (g["reasoning"], g["answer"], g["reasoning_closed"], g["think_end_count"]) == \
            (f"r{i} {q}", f"a{i}", True, 1)
        reasoning = len(tok.encode(g["reasoning"], add_special_tokens=False))
        answer = len(tok.encode(g["answer"], add_special_tokens=False)) + 1  # + the final EOS
        end = len(tok.encode("</think>", add_special_tokens=False))
        assert (g["reasoning_tokens"], g["answer_tokens"], g["completion_tokens"]) == \
            (reasoning, answer, reasoning + end + answer)
    assert not (run_dir / "generate/teacher_topk").exists()
    assert json.loads((run_dir / "generate/manifest.json").read_text())["counts"]["text_only"] is True
    assert "training on it will be SFT" in result.output


@pytest.mark.parametrize("url, insecure, ok", [
    ("http://10.1.2.3:8000/v1", False, False),
    ("http://api.example.com/v1", False, False),
    ("http://10.1.2.3:8000/v1", True, True),
    ("https://api.deepseek.com", False, True),
    ("http://127.0.0.5:8000/v1", False, True),
    ("http://localhost:8000/v1", False, True),
    ("http://[::1]:8000/v1", False, True),
])
def test_plain_http_to_another_host_is_refused(tmp_path, url, insecure, ok):
    path = write_config(tmp_path / "h.yaml", f"""
        generate: {{backend: openai-chat, openai: {{base_url: "{url}", allow_insecure_http: {str(insecure).lower()}}}}}
        """)
    if ok:
        assert config.load(path).generate.openai.base_url == url
        return
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert url in str(e.value) and "allow_insecure_http" in str(e.value) and "\n" not in str(e.value)


def test_real_server_chat_topk_matches_the_servers_logprobs(server, tmp_path, artifacts, tiny_teacher_dir,  # noqa: F811
                                                            monkeypatch):
    """vLLM's /v1/chat/completions with logprobs: every reply is recorded on its way in, and the
    top-k sidecars must decode to the ids and logprobs the server returned."""
    replies = []
    post = ServedTeacher._post

    def recording(self, url, body):
        reply = post(self, url, body)
        replies.append((body, reply))
        return reply

    monkeypatch.setattr(ServedTeacher, "_post", recording)
    # no tool prompt: vLLM refuses tools unless started with --enable-auto-tool-choice and a parser
    cfg, run_dir = _run(tmp_path, artifacts, tiny_teacher_dir, "rs", f"""
          n: 2
          max_new_tokens: 16
          openai: {{base_url: "{server}", concurrency: 3}}
        """, tools=False)
    result = CliRunner().invoke(main, ["generate", str(cfg)])
    assert result.exit_code == 0, result.output

    server_says = {}  # sample seed -> (token ids, sampled logprobs, [(id, logprob)] per position)
    for body, reply in replies:
        if body is None:
            continue  # GET /models
        for choice in reply["choices"]:
            positions = choice["logprobs"]["content"]
            server_says[body["seed"] + choice["index"]] = (
                [int(p["token"].split(":")[1]) for p in positions], [p["logprob"] for p in positions],
                [[(int(c["token"].split(":")[1]), c["logprob"]) for c in p["top_logprobs"]] for p in positions])
    decoded = {}
    for part in (run_dir / "generate/teacher_topk").glob("*.parquet"):
        table, order = topk.read_part(part)
        decoded.update({r["sample_id"]: topk.decode(r, order) for r in table.to_pylist()})
    gens = _generations(run_dir)
    assert len(gens) == 8 and set(decoded) == {g["sample_id"] for g in gens}
    for g in gens:
        token_ids, sampled, ids, lp = decoded[g["sample_id"]]
        want_ids, want_sampled, candidates = server_says[g["seed"]]
        assert list(token_ids) == want_ids and len(want_ids) == g["completion_tokens"] and ids.shape[1] == 5
        np.testing.assert_allclose(sampled, want_sampled, atol=0.011)  # quantized in steps of 0.02
        for row_ids, row_lp, cands in zip(ids, lp, candidates):
            best = sorted(cands, key=lambda c: -c[1])[:5]  # vLLM puts the sampled token first
            assert set(row_ids.tolist()) == {i for i, _ in best}
            np.testing.assert_allclose(row_lp, [v for _, v in best], atol=0.011)
    m = json.loads((run_dir / "generate/manifest.json").read_text())
    assert m["counts"]["text_only"] is False and m["settings"]["topk"] is True
