"""`distill plan`: the cost arithmetic, checked by hand against the module's own constants."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipeline import arithmetic, plan
from pipeline.config import load
from pipeline.errors import PipelineError
from pipeline.schema import GENERATIONS

R1 = ("deepseek-r1", "8xH200")


def _config(tmp_path, models="{teacher: deepseek-ai/DeepSeek-R1, student: Qwen/Qwen2.5-1.5B-Instruct}",
            prepare="{arithmetic: {n_train: 10, n_eval: 2}}", generate="{preset: deepseek-r1, n: 2}", extra=""):
    path = tmp_path / "plan.yaml"
    path.write_text(f"run: {{name: p, artifacts_dir: '{tmp_path / 'artifacts'}'}}\nmodels: {models}\n"
                    f"prepare: {prepare}\ngenerate: {generate}\n{extra}")
    return load(path)


def test_plan_arithmetic_from_the_config(tmp_path):
    result = plan.run(_config(tmp_path), "8xH200")
    json.dumps(result)  # JSON-able as it is

    questions = [r["question"] for r in arithmetic.problems(10, [1, 2, 3], 0)]
    prompt_tokens = sum(map(len, questions)) / len(questions) / plan.CHARS_PER_TOKEN
    samples = (10 + 2) * 2
    output = samples * plan.R1_TOKENS_PER_SAMPLE
    rate, prefill = plan.TEACHER_TOK_S[R1][0], plan.PREFILL_TOK_S[R1][0]
    generation = output / rate / 3600 + samples * prompt_tokens / prefill / 3600
    topk = output * 20 * plan.BYTES_PER_CANDIDATE / 1e9
    text = (output + samples * prompt_tokens) * plan.TEXT_BYTES_PER_TOKEN / 1e9
    # 20 train samples, the verified keep rate, 1 epoch; each sequence capped at train.max_length (4096)
    train_tokens = 10 * 2 * plan.KEEP_RATE_VERIFIED * 1.0 * 4096
    params = plan.STUDENTS["qwen2.5-1.5b"]
    train_hours = 6 * params * train_tokens / (8 * plan.GPU_BF16_TFLOPS * 1e12 * plan.MFU) / 3600

    exact = pytest.approx
    assert result["node"] == "8xH200" and result["prompts"] == 12 and result["samples"] == samples == 24
    assert result["prompts_by_split"] == {"train": 10, "eval": 2}
    assert result["tokens_per_sample"] == plan.R1_TOKENS_PER_SAMPLE
    assert result["prompt_tokens_per_sample"] == exact(prompt_tokens, rel=1e-12)
    assert result["output_tokens"] == output
    assert result["teacher_tok_s"] == rate
    assert result["generation_hours"] == exact(generation, rel=1e-12)
    assert result["topk_gb"] == exact(topk, rel=1e-12)
    assert result["text_gb"] == exact(text, rel=1e-12)
    assert result["storage_gb"] == exact(topk + text, rel=1e-12)
    assert result["student_params"] == params
    assert result["train_tokens"] == exact(train_tokens, rel=1e-12)
    assert result["train_hours"] == exact(train_hours, rel=1e-12)
    assert result["total_hours"] == exact(generation + train_hours, rel=1e-12)
    assert result["fits_three_hours"] is True and result["dominant"] == "generation"
    assert result["sources"]["tokens_per_sample"].startswith("published: Open R1")
    assert result["sources"]["teacher_tok_s"].startswith("published: dstack")
    assert set(result["sources"]) >= {"prompts", "tokens_per_sample", "teacher_tok_s", "student_params",
                                      "keep_rate", "train_flop_s", "three_hours"}


def _generation(i: int, completion: int, prompt: int) -> dict:
    return {"sample_id": f"p{i}-0", "prompt_id": f"p{i}", "sample_idx": 0, "split": "train", "prompt_text": "q",
            "prompt_token_ids": list(range(prompt)), "reasoning": "r", "answer": "a", "reasoning_closed": True,
            "think_end_count": 1, "think_end_index": completion - 2, "prompt_tokens": prompt,
            "completion_tokens": completion, "reasoning_tokens": completion - 2, "answer_tokens": 1,
            "finish_reason": "stop", "model": "teacher", "seed": i, "latency_s": 1.0}


def test_measured_lengths_and_keep_rate_replace_the_assumptions(tmp_path):
    cfg = _config(tmp_path)
    shards = cfg.run_dir / "generate" / "generations"
    shards.mkdir(parents=True)
    pq.write_table(GENERATIONS.from_pylist([_generation(0, 100, 10), _generation(1, 300, 30)]),
                   shards / "part-000of001-00000.parquet")
    (cfg.run_dir / "clean").mkdir()
    (cfg.run_dir / "clean" / "manifest.json").write_text(json.dumps({"counts": {"samples": 24, "kept": 12}}))

    result = plan.run(cfg, "8xh200")  # node names are case-insensitive
    assert result["tokens_per_sample"] == 200 and result["prompt_tokens_per_sample"] == 20
    assert result["output_tokens"] == 24 * 200
    assert result["sources"]["tokens_per_sample"].startswith("measured")
    assert result["keep_rate"] == 0.5 and result["sources"]["keep_rate"].startswith("measured")
    assert result["train_tokens"] == 10 * 2 * 0.5 * (200 + 20)


def test_unknown_node_names_the_known_ones(tmp_path):
    with pytest.raises(PipelineError, match="unknown node 'gpu9'") as e:
        plan.run(_config(tmp_path), "gpu9")
    assert all(name in str(e.value) for name in plan.NODES)


def test_r1_does_not_fit_an_h100_node(tmp_path):
    with pytest.raises(PipelineError, match="685 GB .* 8xH100's 640 GB; plan on 8xH200"):
        plan.run(_config(tmp_path), "8xH100")


def test_inputs_are_counted_or_the_count_is_required(tmp_path):
    rows = [{"q": "What is 1 + 1?", "s": "train"}, {"q": "What is 2 + 2?", "s": "train"}, {"q": "3 + 3?", "s": "eval"}]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    cfg = _config(tmp_path, prepare=f"{{inputs: [{{path: '{data}', prompt: q, split_column: s}}]}}")
    result = plan.run(cfg, "8xH200")
    assert result["prompts_by_split"] == {"train": 2, "eval": 1} and result["samples"] == 6
    assert result["prompt_tokens_per_sample"] == pytest.approx((14 + 14 + 6) / 3 / plan.CHARS_PER_TOKEN)

    missing = _config(tmp_path, prepare="{inputs: [{path: data/none.jsonl}]}")
    with pytest.raises(PipelineError, match="no such file.*--prompts N"):
        plan.run(missing, "8xH200")
    result = plan.run(missing, "8xH200", prompts=1000)
    assert result["prompts"] == 1000 and result["samples"] == 2000
    assert result["prompt_tokens_per_sample"] == plan.DEFAULT_PROMPT_TOKENS


def test_cpu_node_reads_this_machines_bench(tmp_path):
    cfg = _config(tmp_path, models="{student: pruned}", generate="{preset: smollm2, n: 2}")
    with pytest.raises(PipelineError, match="run `distill bench generate"):
        plan.run(cfg, "cpu")
    bench = tmp_path / "artifacts" / "bench"
    bench.mkdir(parents=True)
    (bench / "generate.json").write_text(json.dumps({"teacher": "smollm2-135m-instruct", "pipeline_tok_s": 50.0,
                                                     "bytes_per_candidate": 1.9}))
    result = plan.run(cfg, "cpu")
    assert result["teacher_tok_s"] == 50.0 and result["sources"]["teacher_tok_s"].startswith("measured")
    assert result["bytes_per_candidate"] == 1.9
    assert result["tokens_per_sample"] == 256 * plan.BUDGET_SHARE  # smollm2 preset: max_new_tokens 256
    assert result["generation_hours"] == pytest.approx(24 * 128 / 50.0 / 3600)
    # the pruned student: SmolLM2's embeddings plus 6 of its 30 blocks; the real pruned copy has 49,552,704
    assert result["student_params"] == pytest.approx(49_552_704, rel=1e-4)
    assert result["train_flop_s"] == plan.CPU_TRAIN_FLOP_S


def test_retries_count_as_if_every_first_try_failed(tmp_path):
    """generate.retries samples at most `retries` more per train prompt: the plan counts them all."""
    result = plan.run(_config(tmp_path, generate="{preset: deepseek-r1, n: 2, retries: 3}"), "8xH200")
    assert result["samples"] == 12 * 2 + 10 * 3
    assert result["output_tokens"] == result["samples"] * plan.R1_TOKENS_PER_SAMPLE
