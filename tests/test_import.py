"""distill import: every shape of trace file and every reasoning convention becomes the prompts
and generations tables of a run (counted in the summary), bad mappings are one-line errors, and
clean, sql, report and SFT training run on the imported run while KD refuses in one line, until
`distill generate --score` attaches the local teacher's top-k and KD trains on it."""
import json
import re
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from transformers import AutoTokenizer

from pipeline import topk
from pipeline.cli import main
from pipeline.files import read_table
from pipeline.schema import GENERATIONS, PROMPTS
from tests.conftest import ROOT, distill_cli, write_config

R1_TRACE = "<think>\nTwo plus four is six.\n</think>\n\n\\boxed{6}"
CHINESE_PROMPT = "我有三个苹果，她给了我两个。一共有几个？"
CHINESE_ANSWER = "\n\n一共有五个苹果。\\boxed{5}"


def _config(tmp_path, teacher, inputs: list[dict], extra: str = ""):
    traces = json.dumps({"inputs": inputs}, ensure_ascii=False)  # JSON is YAML
    return write_config(tmp_path / "c.yaml", f"""
        run: {{name: r, artifacts_dir: {tmp_path / 'artifacts'}}}
        models: {{teacher: {teacher}, student_layers: [0], dtype: float32}}
        traces: {traces}
        clean: {{rules: [truncated, unclosed_reasoning, empty_answer], keep_incorrect: true, sql_dir: {ROOT / 'sql'}}}
        train: {{kd_weight: 0, max_steps: 1, per_device_train_batch_size: 2, logging_steps: 1, save_steps: 1000}}
        {extra}
        """)


def _import(tmp_path, teacher, files: dict, inputs: list[dict], *args, extra: str = ""):
    """Write the trace files, run `distill import`, return (result, prompts, generations by sample_id)."""
    for name, content in files.items():
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False))
    inputs = [{**i, "path": str(tmp_path / i["path"])} for i in inputs]
    result = CliRunner().invoke(main, ["import", str(_config(tmp_path, teacher, inputs, extra)), *args])
    run = tmp_path / "artifacts/r"
    if result.exit_code != 0:
        return result, None, None
    prompts = read_table(PROMPTS, run / "prepare/prompts.parquet").to_pylist()
    gens = [r for p in sorted((run / "generate/generations").glob("part-*.parquet"))
            for r in read_table(GENERATIONS, p).to_pylist()]  # the schema and its non-null columns checked
    return result, prompts, {g["sample_id"]: g for g in gens}


def _jsonl(rows: list[dict]) -> str:
    return "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"


def _by_prompt(prompts, gens) -> dict:
    """user text -> its samples, in sample_idx order"""
    text = {p["prompt_id"]: p["messages"][-1]["content"] for p in prompts}
    out = {}
    for g in sorted(gens.values(), key=lambda g: g["sample_idx"]):
        out.setdefault(text[g["prompt_id"]], []).append(g)
    return out


def test_r1_json_array_with_nested_fields(tmp_path, tiny_teacher_dir):
    records = [
        {"problem": "What is 2+4?", "meta": {"id": 7, "answer": "6"}, "generator": {"name": "DeepSeek-R1"},
         "model_answers": {"thinking_model": R1_TRACE}},
        # R1's template opens the reasoning in the prompt: the trace starts inside it
        {"problem": CHINESE_PROMPT, "meta": {"id": 8, "answer": "5"}, "generator": {"name": "DeepSeek-R1"},
         "model_answers": {"thinking_model": "两个加三个。\n</think>" + CHINESE_ANSWER}},
    ]
    result, prompts, gens = _import(tmp_path, tiny_teacher_dir, {"r1.json": records}, [
        {"path": "r1.json", "prompt": "problem", "reference": "meta.answer", "id": "meta.id",
         "completion": "model_answers.thinking_model", "model": "generator.name"}])
    assert result.exit_code == 0, result.output
    assert "read 2, rejected 0, dropped_empty 0, merged_duplicate 0, kept 2" in result.output
    assert "think_tags 1, no_opening_tag 1, reasoning_content 0, reasoning_column 0, no_tags 0; unclosed " \
           "(finish_reason length) 0" in result.output
    samples = _by_prompt(prompts, gens)
    tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    first = samples["What is 2+4?"][0]
    assert first["sample_id"].endswith("-0") and first["split"] == "train"
    assert first["reasoning"] == "Two plus four is six.\n" and first["answer"] == "\n\n\\boxed{6}"
    assert first["reasoning_closed"] and first["think_end_count"] == 1 and first["finish_reason"] == "stop"
    # the teacher's chat template renders the prompt; token counts as generate records them
    assert first["prompt_text"] == "<|im_start|>user\nWhat is 2+4?<|im_end|>\n<|im_start|>assistant\n"
    assert first["prompt_token_ids"] == tok.encode(first["prompt_text"], add_special_tokens=False)
    assert first["prompt_tokens"] == len(first["prompt_token_ids"])
    assert first["reasoning_tokens"] == len(tok.encode(first["reasoning"], add_special_tokens=False))
    assert first["answer_tokens"] == len(tok.encode(first["answer"], add_special_tokens=False)) + 1  # + EOS
    assert first["think_end_index"] == first["reasoning_tokens"]
    assert first["completion_tokens"] == first["reasoning_tokens"] + 1 + first["answer_tokens"]  # </think>: 1 token
    assert first["model"] == "DeepSeek-R1" and first["seed"] is None and first["latency_s"] == 0
    p = next(p for p in prompts if p["prompt_id"] == first["prompt_id"])
    assert p["reference"] == "6" and p["source_id"] == "7" and p["source"] == "r1.json" and p["task"] == "math"
    # Chinese text survives intact, prompt and trace
    zh = samples[CHINESE_PROMPT][0]
    assert zh["reasoning"] == "两个加三个。\n" and zh["answer"] == CHINESE_ANSWER and zh["reasoning_closed"]

    run = tmp_path / "artifacts/r"
    for stage in ("prepare", "generate"):
        assert json.loads((run / stage / "manifest.json").read_text())["imported"] is True
    m = json.loads((run / "generate/manifest.json").read_text())
    assert m["conventions"]["think_tags"] == 1 and m["counts"]["samples"] == 2
    assert m["settings"]["think_end"] == "</think>" and m["config"]["generate"]["think_end"] == "</think>"
    assert not (run / "generate/teacher_topk").exists()
    assert [p.name for p in (run / "generate/generations").iterdir()] == ["part-000of001-00000.parquet"]


def test_openai_messages_and_reasoning_content(tmp_path, tiny_teacher_dir):
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3+3?"},
                      {"role": "assistant", "content": "<think>3+3=6</think>\\boxed{6}"}]},
        # the DeepSeek API's message: reasoning apart from the answer
        {"messages": [{"role": "user", "content": "What is 4+4?"},
                      {"role": "assistant", "content": "\\boxed{8}", "reasoning_content": "4+4=8"}]},
    ]
    api = [{"q": "What is 1+1?", "response": {"content": "\\boxed{2}", "reasoning_content": "1+1=2"}}]
    files = {"chat.jsonl": _jsonl(rows), "api.jsonl": _jsonl(api)}
    result, prompts, gens = _import(tmp_path, tiny_teacher_dir, files, [
        {"path": "chat.jsonl", "messages": "messages"}, {"path": "api.jsonl", "prompt": "q", "completion": "response"}])
    assert result.exit_code == 0, result.output
    assert "think_tags 1, no_opening_tag 0, reasoning_content 2" in result.output
    samples = _by_prompt(prompts, gens)
    assert [p["messages"] for p in prompts][0] == [{"role": "system", "content": "Be brief."},
                                                   {"role": "user", "content": "What is 3+3?"}]
    six = samples["What is 3+3?"][0]
    assert (six["reasoning"], six["answer"]) == ("3+3=6", "\\boxed{6}")
    for q, reasoning, answer in (("What is 4+4?", "4+4=8", "\\boxed{8}"), ("What is 1+1?", "1+1=2", "\\boxed{2}")):
        g = samples[q][0]
        assert (g["reasoning"], g["answer"], g["reasoning_closed"], g["think_end_count"]) == \
            (reasoning, answer, True, 1)
        assert g["prompt_text"].startswith("<|im_start|>user\n" + q)


def test_sharegpt_conversations_with_role_mapping(tmp_path, tiny_teacher_dir):
    sharegpt = [{"conversations": [{"from": "system", "value": "Think first."},
                                   {"from": "human", "value": "What is 5+1?"},
                                   {"from": "gpt", "value": "<think>5+1=6</think>The answer is 6."}]}]
    own = [{"chat": [{"from": "asker", "value": "What is 9-3?"}, {"from": "solver", "value": "9-3=6</think>6"}]}]
    result, prompts, gens = _import(tmp_path, tiny_teacher_dir, {"sg.json": sharegpt, "own.json": own}, [
        {"path": "sg.json", "conversations": "conversations"},
        {"path": "own.json", "conversations": "chat", "roles": {"asker": "user", "solver": "assistant"}}])
    assert result.exit_code == 0, result.output
    samples = _by_prompt(prompts, gens)
    assert prompts[0]["messages"] == [{"role": "system", "content": "Think first."},
                                      {"role": "user", "content": "What is 5+1?"}]
    assert samples["What is 5+1?"][0]["answer"] == "The answer is 6."
    assert (samples["What is 9-3?"][0]["reasoning"], samples["What is 9-3?"][0]["answer"]) == ("9-3=6", "6")


def test_json_object_records_and_csv_reasoning_answer_columns(tmp_path, tiny_teacher_dir):
    doc = {"version": 2, "data": {"rows": [{"question": "What is 6+1?", "output": "6+1=7</think>\\boxed{7}"}]}}
    csv = ("question,thought,final,split\n"
           "What is 2+2?,\"Two and two, four.\",\\boxed{4},train\n"
           "What is 3+2?,<think>Three and two.</think>,\\boxed{5},eval\n")
    result, prompts, gens = _import(tmp_path, tiny_teacher_dir, {"doc.json": doc, "t.csv": csv}, [
        {"path": "doc.json", "records": "data.rows", "prompt": "question", "completion": "output"},
        {"path": "t.csv", "prompt": "question", "reasoning": "thought", "answer": "final", "split_column": "split"}])
    assert result.exit_code == 0, result.output
    assert "reasoning_column 2" in result.output and "split_train 2, split_eval 1" in result.output
    samples = _by_prompt(prompts, gens)
    assert samples["What is 6+1?"][0]["answer"] == "\\boxed{7}"
    four, five = samples["What is 2+2?"][0], samples["What is 3+2?"][0]
    assert (four["reasoning"], four["answer"], four["think_end_count"]) == ("Two and two, four.", "\\boxed{4}", 1)
    assert five["reasoning"] == "Three and two." and five["split"] == "eval"  # its tags are not reasoning


def test_template_tokens_echo_and_several_completions(tmp_path, tiny_teacher_dir):
    rows = [
        # a dump of the whole R1 sequence: template tokens around the prompt and the trace
        {"prompt": "What is 5+5?", "completions": [
            "<｜begin▁of▁sentence｜><｜User｜>What is 5+5?<｜Assistant｜><think>\n5+5=10\n</think>\n\n\\boxed{10}"
            "<｜end▁of▁sentence｜>",
            "What is 5+5? Ten.</think>\\boxed{10}",  # the prompt echoed before the trace
            "Five and five</think>\\boxed{10}"]},
        {"prompt": "What is 5+5?", "completions": ["5+5 is 10</think>\\boxed{10}"]},  # the same prompt again
    ]
    result, prompts, gens = _import(tmp_path, tiny_teacher_dir, {"many.jsonl": _jsonl(rows)},
                                    [{"path": "many.jsonl", "completion": "completions"}])
    assert result.exit_code == 0, result.output
    assert "merged_duplicate 1, kept 1" in result.output
    assert "R1 template tokens from 1, an echoed prompt from 1 completions" in result.output
    assert len(prompts) == 1
    s = _by_prompt(prompts, gens)["What is 5+5?"]
    assert [g["sample_idx"] for g in s] == [0, 1, 2, 3]
    assert (s[0]["reasoning"], s[0]["answer"]) == ("5+5=10\n", "\n\n\\boxed{10}")
    assert s[1]["reasoning"] == "Ten." and s[3]["reasoning"] == "5+5 is 10"
    assert not any("｜" in g["reasoning"] + g["answer"] for g in s)


def test_unclosed_trace_is_truncated_for_clean_sql_report_and_sft_training(tmp_path, tiny_teacher_dir):
    rows = [{"prompt": "What is 2+3?", "completion": "2+3=5</think>\\boxed{5}", "answer": "5"},
            {"prompt": "What is 7+1?", "completion": "<think>7+1 is", "answer": "8"},  # cut inside its reasoning
            {"prompt": "What is 4+1?", "completion": "Four plus one", "answer": "5"},  # opened by the prompt: cut too
            {"prompt": "What is 1+2?", "completion": "1+2=3</think>\\boxed{3}", "answer": "3"}]
    result, _, gens = _import(tmp_path, tiny_teacher_dir, {"t.jsonl": _jsonl(rows)},
                              [{"path": "t.jsonl", "reference": "answer", "completion": "completion"}])
    assert result.exit_code == 0, result.output
    assert "think_tags 1, no_opening_tag 3" in result.output
    assert "unclosed (finish_reason length) 2" in result.output
    cut = [g for g in gens.values() if not g["reasoning_closed"]]
    assert len(cut) == 2 and all(g["finish_reason"] == "length" and g["answer"] == "" for g in cut)
    assert all(g["completion_tokens"] == g["reasoning_tokens"] and g["think_end_index"] is None for g in cut)

    cfg, run = tmp_path / "c.yaml", tmp_path / "artifacts/r"
    r = CliRunner().invoke(main, ["clean", str(cfg)])
    assert r.exit_code == 0, r.output
    funnel = {f["rule"]: f["dropped"] for f in json.loads((run / "clean/manifest.json").read_text())["funnel"]}
    assert funnel == {"truncated": 2, "unclosed_reasoning": 0, "empty_answer": 0}
    r = distill_cli("sql", run, "SELECT count(*) AS n FROM generations", "--format", "csv")
    assert r.stdout.split() == ['"n"', "4"]
    r = CliRunner().invoke(main, ["report", str(run)])
    assert r.exit_code == 0 and "imported traces" in (run / "report.html").read_text()

    assert CliRunner().invoke(main, ["models", str(cfg)]).exit_code == 0
    distill_cli("train", cfg)  # SFT on the re-tokenized text: the student never needs a top-k
    m = json.loads((run / "train/manifest.json").read_text())
    assert m["mode"] == "text" and m["counts"]["samples"] == 2 and m["counts"]["steps"] == 1
    r = distill_cli("train", cfg, "--set", "train.kd_weight=0.5", check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "imported traces have no teacher top-k; train with kd_weight 0" in r.stderr


def _gens(run) -> dict:
    return {g["sample_id"]: g for p in sorted((run / "generate/generations").glob("part-*.parquet"))
            for g in read_table(GENERATIONS, p).to_pylist()}


def test_score_imported_traces_attaches_teacher_topk_for_kd(tmp_path, tiny_teacher_dir):
    """generate --score on an imported run: every sample (both of a prompt's) scored by the tiny
    teacher as the teacher would have written it; a failure before the swap leaves the import
    intact and the rerun resumes from the staging directory; then clean and KD training run."""
    long = "<think>" + "1+1=2. " * 150 + "</think>2"  # over max_model_len: skipped, kept unscored
    rows = [{"prompt": "What is 2+3?", "answer": "5", "completions": [
                "<think>\n2+3=5\n</think>\n\n\\boxed{5}", "Two and three make five.</think>\\boxed{5}"]},
            {"prompt": "What is 7+1?", "answer": "8", "completions": ["<think>7+1 is", long]}]
    plain = [{"prompt": "Say 4.", "completion": "4"}]  # no_tags: no reasoning, the text is the answer
    # the text the teacher writes after its prompt (its template does not open the reasoning), and EOS if closed
    teacher_wrote = {"<think>\n2+3=5\n</think>\n\n\\boxed{5}": True,
                     "<think>\nTwo and three make five.</think>\\boxed{5}": True, "<think>\n7+1 is": False, "4": True}
    result, _, imported = _import(
        tmp_path, tiny_teacher_dir, {"t.jsonl": _jsonl(rows), "plain.jsonl": _jsonl(plain)},
        [{"path": "t.jsonl", "reference": "answer", "completion": "completions"},
         {"path": "plain.jsonl", "completion": "completion"}],
        extra="generate: {top_k: 4, shard_size: 2, engine: {max_model_len: 256, dtype: float32, enforce_eager: true}}")
    assert result.exit_code == 0, result.output
    cfg, run = tmp_path / "c.yaml", tmp_path / "artifacts/r"
    sets = ["--set", "train.top_k=4"]
    assert CliRunner().invoke(main, ["models", str(cfg), *sets]).exit_code == 0
    assert CliRunner().invoke(main, ["clean", str(cfg), *sets]).exit_code == 0
    import_key = json.loads((run / "generate/manifest.json").read_text())["key"]
    parts = {p.name: p.read_bytes() for p in (run / "generate/generations").iterdir()}
    r = CliRunner().invoke(main, ["generate", str(cfg), "--score", *sets, "--set", "generate.backend=openai"])
    assert r.exit_code == 1 and "--score on imported traces needs generate.backend: vllm" in r.output

    # scoring fails at the swap: generate/ still holds the import, untouched; the staging directory all the scores
    code = ("import sys, pipeline.generate as g\n"
            "def killed(*a): raise RuntimeError('killed at the swap')\n"
            "g.replace_dir = killed\n"
            "from pipeline.cli import main\n"
            "main(sys.argv[1:])\n")
    r = subprocess.run([sys.executable, "-c", code, "generate", str(cfg), "--score", *sets], cwd=ROOT,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 1 and "killed at the swap" in r.stderr, r.stderr[-2000:]
    staging = run / ".generate.scored.tmp"
    assert len(list((staging / "teacher_topk").glob("part-*.parquet"))) == 2  # 4 samples, 2 a part
    assert {p.name: p.read_bytes() for p in (run / "generate/generations").iterdir()} == parts
    assert not (run / "generate/teacher_topk").exists()
    assert "scored_with" not in json.loads((run / "generate/settings.json").read_text())
    r = distill_cli("train", cfg, *sets, "--set", "train.kd_weight=0.5", check=False)
    assert r.returncode == 1 and "or attach a local teacher's with `distill generate" in r.stderr

    r = distill_cli("generate", cfg, "--score", *sets)  # nothing left that fits: no engine, only the swap
    assert "5 samples; 4 scored in" in r.stdout and ", 1 pending" in r.stdout  # the one too long
    assert "1 samples skipped (longer than max_model_len)" in r.stdout
    assert not staging.exists()
    gens = _gens(run)
    long_id = next(sid for sid, g in imported.items() if g["reasoning"].startswith("1+1=2."))
    assert set(gens) == set(imported) - {long_id}
    for sid, g in gens.items():  # the imported text and structure, the teacher's prompt and token counts
        for col in ("prompt_id", "sample_idx", "split", "reasoning", "answer", "reasoning_closed", "think_end_count",
                    "finish_reason", "model"):
            assert g[col] == imported[sid][col], (sid, col)
    assert sorted(g["sample_idx"] for g in gens.values()) == [0, 0, 0, 1]
    unscored = pq.read_table(run / "generate/unscored").to_pylist()
    assert [u["sample_id"] for u in unscored] == [long_id]
    assert unscored[0]["reasoning"] == imported[long_id]["reasoning"]
    assert f"sample {long_id}: prompt + completion is" in pq.read_table(run / "generate/skipped-000of001.parquet")[
        "reason"][0].as_py()

    tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    scored = {}
    for part in (run / "generate/teacher_topk").glob("part-*.parquet"):
        table, order = topk.read_part(part)
        scored.update({r["sample_id"]: topk.decode(r, order) for r in table.to_pylist()})
    assert set(scored) == set(gens)
    expected = {}
    for text, eos in teacher_wrote.items():
        expected[tuple(tok.encode(text, add_special_tokens=False) + [tok.eos_token_id] * eos)] = text
    for sid, (tokens, sampled, ids, lps) in scored.items():
        assert tuple(tokens.tolist()) in expected, (sid, tok.decode(tokens))
        g = gens[sid]
        assert ids.shape == lps.shape == (len(tokens), 4) == (g["completion_tokens"], 4)  # top-k at every token
        assert np.isfinite(lps).all() and np.isfinite(sampled).all()
        assert g["prompt_token_ids"] == tok.encode(g["prompt_text"], add_special_tokens=False)
    assert sorted(expected.values()) == sorted(expected[tuple(t.tolist())] for t, *_ in scored.values())

    settings = json.loads((run / "generate/settings.json").read_text())
    m = json.loads((run / "generate/manifest.json").read_text())
    sha = json.loads((run / "models/manifest.json").read_text())["models"]["teacher"]["weights_sha"]
    assert settings["imported"] and settings["scored_with"] == sha and settings["import"]["imported"]
    assert settings["inputs"] == [str(tmp_path / "t.jsonl"), str(tmp_path / "plain.jsonl")]
    assert not settings["retokenized"] and m["tokenizer"] == "the import used the teacher's tokenizer"
    assert m["imported"] and m["scored_with"] == sha and m["counts"]["samples"] == 4
    assert m["counts"]["samples_skipped"] == 1 and m["import_counts"]["samples"] == 5
    assert m["conventions"]["think_tags"] == 3

    r = distill_cli("generate", cfg, "--score", *sets)  # a rerun is a no-op
    assert "already scored" in r.stdout
    assert json.loads((run / "generate/manifest.json").read_text()) == m

    r = CliRunner().invoke(main, ["clean", str(cfg), *sets])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "clean/manifest.json").read_text())["inputs"]["generate"] == m["key"] != import_key
    distill_cli("train", cfg, *sets, "--set", "train.kd_weight=0.5")
    t = json.loads((run / "train/manifest.json").read_text())
    assert t["mode"] == "same" and t["counts"]["samples"] == 3 and t["counts"]["steps"] == 1
    r = CliRunner().invoke(main, ["report", str(run)])
    assert r.exit_code == 0 and "top-k attached by the local teacher" in (run / "report.html").read_text()
    # importing again puts the unscored traces back, and no top-k stays beside them
    assert CliRunner().invoke(main, ["import", str(cfg)]).exit_code == 0
    assert _gens(run).keys() == imported.keys() and "scored_with" not in json.loads(
        (run / "generate/settings.json").read_text())
    assert not (run / "generate/teacher_topk").exists() and not (run / "generate/unscored").exists()


@pytest.mark.parametrize("inputs, message", [
    ({"completion": "model_answers.thinkng_model"}, "no row has 'model_answers.thinkng_model' ('model_answers' has: "
                                                    "thinking_model)"),
    ({"completion": "model_answers.thinking_model", "reference": "answr"}, "no row has 'answr' (a row has: problem,"),
    ({"completion": "model_answers.thinking_model", "prompt": "problem.text"}, "no row has 'problem.text' "
                                                                                "('problem' is str)"),
])
def test_misspelt_path_is_one_line_error_naming_file_and_path(tmp_path, tiny_teacher_dir, inputs, message):
    records = [{"problem": "What is 2+4?", "answer": "6", "model_answers": {"thinking_model": R1_TRACE}}]
    result, _, _ = _import(tmp_path, tiny_teacher_dir, {"r1.json": records},
                           [{"path": "r1.json", "prompt": "problem", **inputs}])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert f"{tmp_path / 'r1.json'}: {message}" in lines[0]
    assert not (tmp_path / "artifacts/r/prepare").exists() and not (tmp_path / "artifacts/r/generate").exists()


def test_bad_row_names_its_line_or_is_skipped(tmp_path, tiny_teacher_dir):
    rows = [{"prompt": "What is 2+4?", "completion": R1_TRACE}, {"prompt": "What is 3+4?", "completion": 7},
            {"prompt": "What is 1+4?", "completion": None}]
    files, inputs = {"t.jsonl": _jsonl(rows)}, [{"path": "t.jsonl", "completion": "completion"}]
    result, _, _ = _import(tmp_path, tiny_teacher_dir, files, inputs)
    assert result.exit_code == 1 and "t.jsonl:2: column 'completion' must be a completion" in result.output
    result, prompts, gens = _import(tmp_path, tiny_teacher_dir, files, inputs, "--set", "traces.on_error=skip")
    assert result.exit_code == 0 and "read 3, rejected 2" in result.output and len(gens) == 1
    assert [r["line"] for r in pq.read_table(tmp_path / "artifacts/r/prepare/rejects.parquet").to_pylist()] == [2, 3]
    # the whole pipeline at once would overwrite the imported prompts
    r = CliRunner().invoke(main, ["run", str(tmp_path / "c.yaml")])
    assert r.exit_code == 1 and "goes stage by stage: distill import" in r.output


@pytest.mark.parametrize("entry, message", [
    ("{path: t.jsonl, reasoning: r}", "traces.inputs[0].answer: reasoning and answer come together"),
    ("{path: t.jsonl, messages: m, conversations: c}", "traces.inputs[0].conversations: give messages or"),
    ("{path: t.jsonl}", "traces.inputs[0].completion: give completion, reasoning + answer, or messages"),
    ("{path: t.jsonl, completion: c, roles: {bot: model}}", "traces.inputs[0].roles: maps the file's role names"),
    ("{path: t.jsonl, completion: c, format: csv, records: data}", "traces.inputs[0].records: only for a JSON"),
])
def test_mapping_mistakes_fail_at_load(tmp_path, entry, message):
    from pipeline import config

    cfg = write_config(tmp_path / "c.yaml", f"traces: {{inputs: [{entry}]}}\n")
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load(cfg)
