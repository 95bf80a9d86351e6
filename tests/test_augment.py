"""distill augment: the checks a variant must pass, each on its own, and the stage with the real vLLM
engine on the tiny teacher (whose random weights write garbage: the run is checked for its
structure, funnel and caching, not for variants kept)."""
import json

import pyarrow.parquet as pq
import pytest

from pipeline import augment, config, manifest
from pipeline.config import Config, ConfigError
from pipeline.schema import AUGMENT, PROMPTS
from tests.conftest import distill_cli, write_config

QUESTION = "Ava has 12 apples. Ben gives Ava 3 more apples. How many apples does Ava have now?"
TOOL_REF = json.dumps({"name": "set_temperature", "arguments": {"zone": "driver", "celsius": 22}})


def _prompt(pid, text, split="train", task="math", reference="15", tools=None, language=None):
    return {"prompt_id": pid,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
            "tools": tools, "reference": reference, "task": task, "source": "s", "source_id": "row-1",
            "difficulty": 2, "split": split, "completion": "an old answer", "language": language,
            "parent_prompt_id": None, "template": None}


def _variant(parent, reply, i=0, template="paraphrase", finish="stop"):
    request = augment.rewrite_request(parent, i, Config().augment)
    request.update(template=template, language=config.TEMPLATES[template].language)
    return augment.variant(request, reply, reply, finish, "NFC")


def _check(tmp_path, prompts, variants, cfg=None):
    """Run the checks as the stage does, with prompts written where prepare writes them."""
    source = tmp_path / "prompts.parquet"
    pq.write_table(PROMPTS.from_pylist(prompts), source)
    augment.check_variants(cfg or Config(), prompts, variants, source)
    return [v["rejected"] for v in variants]


def test_math_variant_keeps_every_number_of_the_parent():
    assert augment.reference_holds(QUESTION, "Ben hands Ava 3 more apples; she had twelve. How many now?", "math", "15")
    assert augment.reference_holds("Ava has 1,000 coins and 2.50 dollars.", "艾娃有1000枚硬币和2.5美元。", "math", "x")
    assert not augment.reference_holds(QUESTION, "Ava has 12 apples and gets 4 more. How many?", "math", "15")
    assert not augment.reference_holds(QUESTION, "Ava has 2 apples and gets 3 more.", "math", "15")  # 12 is not 2
    assert not augment.reference_holds("Ava has 2 apples.", "艾娃有十二个苹果。", "math", "2")  # 二 inside 十二 is not 2
    # a number the parent does not have changes the problem, or is the teacher solving it
    assert not augment.reference_holds(QUESTION, "Ava has 12 apples and 3 more: 12 + 3 = 15.", "math", "15")


def test_tool_variant_keeps_the_argument_values_the_parent_mentions():
    said = "Set the driver side to twenty-two degrees"
    assert augment.reference_holds(said, "Make it 22 degrees for the Driver, please", "tool", TOOL_REF)
    assert augment.reference_holds(said, "Driver: 二十二度", "tool", TOOL_REF)
    assert not augment.reference_holds(said, "Make it 23 degrees for the driver", "tool", TOOL_REF)
    assert not augment.reference_holds(said, "主驾调到二十二度", "tool", TOOL_REF)  # "driver" lost in translation
    # "I'm cold" names neither value: nothing is asked of its variants; a no-call reference asks nothing
    assert augment.reference_holds("I'm cold", "Brr, it is chilly in here", "tool", TOOL_REF)
    assert augment.reference_holds("Hello there", "Hi!", "tool", "[]")


def test_reply_label_and_quotes_are_cut():
    assert augment.rewritten_text('Paraphrased text: "Ava has 3 apples."', "NFC") == "Ava has 3 apples."
    assert augment.rewritten_text("译文：“艾娃有3个苹果。”", "NFC") == "艾娃有3个苹果。"
    assert augment.rewritten_text("Ava has 3 apples: how many?", "NFC") == "Ava has 3 apples: how many?"


def test_variant_is_its_parents_row_with_the_new_text():
    parent = _prompt("p1", QUESTION, split="eval", language="en")
    v = _variant(parent, "Translation: 艾娃有12个苹果。本又给了艾娃3个苹果。艾娃现在有几个苹果？", template="translate_zh")
    row = v["prompt"]
    assert row["messages"] == [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "艾娃有12个苹果。本又给了艾娃3个苹果。艾娃现在有几个苹果？"}]
    assert row["split"] == "eval" == v["split"]  # an eval prompt's variants stay eval
    assert (row["parent_prompt_id"], row["template"], row["language"]) == ("p1", "translate_zh", "zh")
    assert (row["reference"], row["task"], row["difficulty"], row["source_id"], row["completion"]) == \
        ("15", "math", 2, None, None)
    assert row["prompt_id"] != "p1" and len(row["prompt_id"]) == 16


def test_each_check_rejects_its_case(tmp_path):
    parent = _prompt("p1", QUESTION)
    other = _prompt("p2", "Chen has 7 marbles and loses 2. How many marbles are left?")
    evals = _prompt("e1", "Dara keeps her shells in a blue box under the bed next to the old red lamp today.",
                    split="eval")
    paraphrase = "Ava owns 12 apples, and Ben hands her 3 more. What is her apple count now?"
    variants = [
        _variant(parent, paraphrase, 0),
        _variant(parent, "", 1),
        _variant(parent, "Ava has 12 apples and Ben", 2, finish="length"),
        _variant(parent, "Ava owns 12 apples and gets 5 more.", 3),
        _variant(parent, QUESTION, 4),  # a copy
        _variant(parent, "Sure! " + QUESTION + " Reply with the new text only.", 5),  # the parent, echoed whole
        _variant(parent, paraphrase + " Thanks.", 6),  # the first variant again, nearly
        _variant(other, "Chen has 7 marbles and loses 2. How many marbles are left?", 0),  # another prompt's text
        _variant(parent, "Ava has 12 apples and 3 more: Dara keeps her shells in a blue box under the bed next to "
                         "the old red lamp today.", 7),
    ]
    assert _check(tmp_path, [parent, other, evals], variants) == [
        None, "empty", "too_long", "reference", "near_duplicate_parent", "near_duplicate_parent",
        "near_duplicate_variant", "near_duplicate_parent", "contaminated"]
    assert augment.funnel_of(variants)[-1] == {"check": "contaminated", "rows_in": 2, "dropped": 1, "rows_out": 1}


def test_exact_duplicate_of_another_prompt_and_eval_variants_are_not_decontaminated(tmp_path):
    a, b = _prompt("p1", "Ava has 7 apples and eats 2. How many are left?"), \
        _prompt("p2", "Chen has 7 marbles and loses 2. How many are left?")
    evals = _prompt("e1", "Dara keeps 40 shells in a blue box under the bed next to the old red lamp today.",
                    split="eval")
    same = "Chen owns 7 marbles; 2 get lost. What number remains?"  # fits both parents; the second is a repeat
    reordered = "Under the bed next to the old red lamp today, Dara keeps 40 shells in a blue box."
    variants = [_variant(b, same), _variant(a, same), _variant(evals, reordered)]
    assert _check(tmp_path, [a, b, evals], variants) == [None, "exact_duplicate", None]


def test_contamination_uses_clean_settings(tmp_path):
    parent = _prompt("p1", "Eli has 5 stamps. He gets 4 more stamps at the fair. How many stamps does Eli have?")
    evals = _prompt("e1", "buying 4 more at the fair on a sunny day, how many cards does Gus hold?", split="eval")
    leak = "After buying 4 more at the fair, how many stamps will Eli have? He has 5 stamps."
    cfg = Config()
    assert _check(tmp_path, [parent, evals], [_variant(parent, leak)], cfg) == [None]  # 6 shared words < 8
    cfg.clean.decontam_ngram = 6
    assert _check(tmp_path, [parent, evals], [_variant(parent, leak)], cfg) == ["contaminated"]


def test_config_templates_and_custom_ones(tmp_path):
    p = write_config(tmp_path / "c.yaml", """
        augment:
          n: 2
          templates: [paraphrase, formal]
          custom_templates: {formal: {instruction: "Say it formally: {prompt}"}}
        """)
    a = config.load(p).augment
    assert a.template("formal").instruction == "Say it formally: {prompt}" and a.template("paraphrase").language == ""
    for override, message in [("augment.templates=[poem]", "augment.templates: unknown template 'poem'"),
                              ("augment.custom_templates.formal.instruction=no slot",
                               "augment.custom_templates.formal.instruction: must hold {prompt}"),
                              ("augment.splits=[test]", "augment.splits: train and/or eval"),
                              ("augment.n=-1", "augment.n: >= 0"),
                              ("augment.temprature=1", "augment.temprature: unknown key")]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            config.load(p, [override])


def test_generate_reads_augments_prompts_only_when_augment_is_on(tmp_path):
    p = write_config(tmp_path / "c.yaml", f"run: {{name: r, artifacts_dir: {tmp_path}}}\n")
    off, on = config.load(p), config.load(p, ["augment.n=2"])
    assert manifest.prompts_path(off) == tmp_path / "r/prepare/prompts.parquet"
    assert manifest.prompts_path(on) == tmp_path / "r/augment/prompts.parquet"
    assert "augment" not in manifest.inputs(off, "generate") and "augment" in manifest.inputs(on, "generate")


def test_augment_with_the_real_engine(tiny_teacher_dir, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", f"""
        run: {{name: a, artifacts_dir: {tmp_path / 'artifacts'}}}
        models: {{teacher: {tiny_teacher_dir}, student_layers: [0], dtype: float32}}
        prepare: {{arithmetic: {{n_train: 3, n_eval: 2}}}}
        augment: {{n: 3, templates: [paraphrase, translate_zh], max_new_tokens: 12}}
        generate: {{think_end: "", max_new_tokens: 8, top_k: 3,
                    engine: {{max_model_len: 1024, dtype: float32, enforce_eager: true}}}}
        """)
    distill_cli("run", cfg, "--until", "prepare")
    early = distill_cli("generate", cfg, check=False)  # with augment on, generate reads its table
    assert early.returncode == 1 and "augment/manifest.json: missing; run `distill augment" in early.stderr
    shown = distill_cli("augment", cfg).stdout
    assert "augment funnel:" in shown and "augment: kept" in shown
    run_dir = tmp_path / "artifacts/a"
    variants = pq.read_table(run_dir / "augment/variants.parquet")
    AUGMENT.validate(variants.schema, "variants")
    variants = variants.to_pylist()
    prepared = pq.read_table(run_dir / "prepare/prompts.parquet").to_pylist()
    train = [p["prompt_id"] for p in prepared if p["split"] == "train"]
    assert sorted((v["parent_prompt_id"], v["variant_idx"]) for v in variants) == \
        sorted((pid, i) for pid in train for i in range(3))  # eval prompts are not rewritten by default
    assert [v["template"] for v in variants if v["parent_prompt_id"] == train[0]] == \
        ["paraphrase", "translate_zh", "paraphrase"]
    assert all(v["split"] == "train" and v["rejected"] in (None, *augment.CHECKS) for v in variants)
    assert any(v["reply"] for v in variants)  # the teacher wrote something
    m = json.loads((run_dir / "augment/manifest.json").read_text())
    kept = [v for v in variants if v["rejected"] is None]
    assert m["counts"]["variants"] == 9 and m["counts"]["kept"] == len(kept)
    assert [f["check"] for f in m["funnel"]] == list(augment.CHECKS)
    assert m["funnel"][0]["rows_in"] == 9 and m["funnel"][-1]["rows_out"] == len(kept)
    assert all(f["rows_in"] - f["dropped"] == f["rows_out"] for f in m["funnel"])
    assert {f["check"]: f["dropped"] for f in m["funnel"]} == \
        {c: sum(v["rejected"] == c for v in variants) for c in augment.CHECKS}
    prompts = pq.read_table(run_dir / "augment/prompts.parquet").to_pylist()
    assert prompts[:len(prepared)] == prepared and [p["prompt_id"] for p in prompts[len(prepared):]] == \
        [v["prompt_id"] for v in kept]
    assert m["inputs"]["prepare"] == json.loads((run_dir / "prepare/manifest.json").read_text())["key"]

    # cached like every stage; a clean rule or a sampling setting of generate leaves it alone, a
    # setting its checks or its teacher use does not
    assert "[augment] up to date" in distill_cli("run", cfg, "--until", "augment").stdout
    assert "[augment] up to date" in distill_cli("run", cfg, "--until", "augment", "--set", "clean.rules=[length]",
                                                 "--set", "generate.n=4").stdout
    for override in ("clean.decontam_ngram=6", "generate.engine.max_model_len=900", "augment.temperature=0.5"):
        assert not manifest.is_fresh(config.load(cfg, [override]), "augment"), override
    views = distill_cli("sql", run_dir, "SELECT count(*) FROM augment", "--format", "csv").stdout
    assert views.split()[-1] == "9"
