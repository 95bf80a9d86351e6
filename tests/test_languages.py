"""clean in every language: near duplicates and decontamination cut Chinese, Japanese and Thai
into characters (they have no spaces between words), language_mix knows the major scripts, takes
the expected one from the question rather than an English instruction around it, and does not
count LaTeX as English; the bench's pandas baseline drops the same rows."""
import random

import pandas as pd
import pyarrow.parquet as pq

from pipeline import bench_clean, clean, minhash
from tests.test_clean import _prompt, _rejects, _run, _sample

HAN = "的一是不了人我在有他这中大来上个国到说们为子和地出道也时年得就那要下以生会自着去之过家学对可里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长"


def _zh(rng, n):
    return "".join(rng.choice(HAN) for _ in range(n))


def test_chinese_near_duplicate_with_a_few_characters_changed(tmp_path):
    rng = random.Random(0)
    base = _zh(rng, 300)
    changed = list(base)
    for i in (60, 150, 240):  # 3 of 300 characters
        changed[i] = "鱼" if changed[i] != "鱼" else "鸟"
    prompts = [_prompt("zh", "盒子里有十二支笔，拿走五支，还剩几支？")]
    samples = [_sample("zh", 0, base + "。"), _sample("zh", 1, "".join(changed) + "。"),
               _sample("zh", 2, _zh(rng, 300) + "。")]
    _, cfg = _run(tmp_path, extra="rules: [near_duplicate]", prompts=prompts, samples=samples)
    clean.run(cfg)
    assert _rejects(cfg) == {"zh-1": "near_duplicate"}


def test_minhash_shingles_spaceless_scripts_by_character():
    import numpy as np
    import pyarrow as pa

    rng = random.Random(2)
    base = _zh(rng, 400)
    changed = "".join("鱼" if i % 40 == 20 else ch for i, ch in enumerate(base))  # 10 of 400 characters
    shingles = lambda t: {t[i:i + 5] for i in range(len(t) - 4)}  # noqa: E731
    true = len(shingles(base) & shingles(changed)) / len(shingles(base) | shingles(changed))
    mix = np.random.default_rng(0).integers(1, 2**63, size=5, dtype=np.uint64) | np.uint64(1)
    sig = minhash.signatures(pa.array([base, changed, "กินข้าวแล้วหรือยัง", "コーヒーを飲みます"]), mix, 256)
    assert abs((sig[0] == sig[1]).mean() - true) < 0.08
    assert ((sig[2:] < 2**32 - 1).sum(axis=1) >= 5).all()  # a Thai or Japanese sentence: a shingle per character, not one


ZH_EVAL = "一个盒子里有十二支笔，小明拿走了五支，又放回了三支。盒子里现在有多少支笔？"


def test_copied_chinese_eval_problem_is_contaminated(tmp_path):
    prompts = [
        _prompt("ev", ZH_EVAL, split="eval"),
        _prompt("leak", f"请认真解答下面这道题：{ZH_EVAL}请写出详细步骤。"),  # glued to other text, no space
        _prompt("other", "小红有三个苹果，她又买了四个苹果。她现在一共有多少个苹果？"),
        _prompt("th_ev", "ในกล่องมีดินสอสิบสองแท่ง ถ้าหยิบไปห้าแท่งจะเหลือกี่แท่ง", split="eval"),
        _prompt("th_leak", "โจทย์ข้อนี้ในกล่องมีดินสอสิบสองแท่ง ถ้าหยิบไปห้าแท่งจะเหลือกี่แท่งครับ"),
    ]
    samples = [_sample("ev", 0, "七支。", split="eval"), _sample("leak", 0, "十二减五加三等于十。"),
               _sample("other", 0, "三加四等于七。"), _sample("th_leak", 0, "เหลือเจ็ดแท่ง")]
    _, cfg = _run(tmp_path, extra="rules: [contaminated]", prompts=prompts, samples=samples)
    clean.run(cfg)
    assert _rejects(cfg) == {"leak-0": "contaminated", "th_leak-0": "contaminated"}


BOXED = "Please reason step by step, and put your final answer within \\boxed{}."
ENGLISH = "There are twelve pens and five are taken away, so seven pens are left. The answer is \\boxed{7}."
QUESTIONS = {  # script -> a question in it, an answer in it, an answer in another script
    "bengali": ("একটি বাক্সে বারোটি কলম আছে। রহিম পাঁচটি কলম নিল। বাক্সে কতটি কলম রইল?",
                "বাক্সে বারোটি কলম ছিল। রহিম পাঁচটি নিল, তাই $12 - 5 = 7$। উত্তর \\boxed{7}।", ENGLISH),
    "greek": ("Ένα κουτί έχει δώδεκα μολύβια. Πόσα μένουν αν πάρουμε πέντε;",
              "Είχαμε δώδεκα μολύβια και πήραμε πέντε, άρα μένουν επτά. Η απάντηση είναι \\boxed{7}.", ENGLISH),
    "cyrillic": ("В коробке двенадцать карандашей. Сколько останется, если взять пять?",
                 "Было двенадцать карандашей, взяли пять, значит осталось семь. Ответ: \\boxed{7}.",
                 "Ένα κουτί είχε δώδεκα μολύβια, πήραμε πέντε και μένουν επτά. \\boxed{7}"),
    "hebrew": ("בקופסה יש שנים עשר עפרונות. כמה נשארים אם לוקחים חמישה?",
               "היו שנים עשר עפרונות, לקחו חמישה, ולכן נשארו שבעה. התשובה היא \\boxed{7}.", ENGLISH),
    "thai": ("ในกล่องมีดินสอสิบสองแท่ง ถ้าหยิบไปห้าแท่งจะเหลือกี่แท่ง",
             "มีดินสอสิบสองแท่ง หยิบไปห้าแท่ง จึงเหลือเจ็ดแท่ง คำตอบคือ \\boxed{7}",
             "盒子里有十二支笔，拿走五支，所以还剩七支。答案是 \\boxed{7}。"),
    "devanagari": ("एक डिब्बे में बारह पेंसिलें हैं। पाँच निकालने पर कितनी बचेंगी?",
                   "डिब्बे में बारह पेंसिलें थीं, पाँच निकालीं, इसलिए सात बचीं। उत्तर \\boxed{7} है।",
                   "বাক্সে বারোটি কলম ছিল, পাঁচটি নেওয়া হল, তাই সাতটি রইল। \\boxed{7}"),
    "arabic": ("في الصندوق اثنا عشر قلمًا. كم يبقى إذا أخذنا خمسة؟",
               "كان هناك اثنا عشر قلمًا وأخذنا خمسة، إذن يبقى سبعة. الجواب \\boxed{7}.",
               "היו שנים עשר עפרונות ולקחו חמישה, נשארו שבעה. \\boxed{7}"),
    "hangul": ("상자에 연필이 열두 자루 있습니다. 다섯 자루를 가져가면 몇 자루가 남습니까?",
               "연필이 열두 자루 있었고 다섯 자루를 가져갔으므로 일곱 자루가 남습니다. 답은 \\boxed{7}입니다.",
               "鉛筆が十二本あって、五本取ったので、残りは七本です。答えは \\boxed{7} です。"),
}


def _language_case():
    prompts, samples, expected = [], [], {}

    def case(pid, question, answers, language=None):
        prompts.append(dict(_prompt(pid, question, reference="7"), language=language))
        for i, (answer, dropped) in enumerate(answers):
            samples.append(_sample(pid, i, answer, answer="\\boxed{7}"))
            if dropped:
                expected[f"{pid}-{i}"] = "language_mix"

    for script, (question, same, other) in QUESTIONS.items():
        case(script, question, [(same, False), (other, True)])
    # an English instruction around a Bangla question expects Bengali
    bangla_question, bangla_answer, _ = QUESTIONS["bengali"]
    case("bn_wrapped", f"{BOXED}\n\n{bangla_question}\n\nShow your work and answer in the language of the question.",
         [(bangla_answer, False), (ENGLISH, True)])
    # Japanese mixes kanji, hiragana and katakana (and ー, a Common letter) in one answer
    case("ja", "箱に鉛筆が十二本あります。太郎さんが五本取りました。残りは何本ですか？",
         [("最初に十二本あって、コーヒーを飲みながら五本取ったので、残りは $12-5=7$ 本です。答えは \\boxed{7} です。", False),
          (ENGLISH, True)])
    # LaTeX commands and math are not English letters, in an English or a Chinese answer
    latex = "$\\int_0^1 x^2\\,dx = \\left[\\frac{x^3}{3}\\right]_0^1 = \\frac{1}{3}$"
    case("en_latex", "Compute the integral of x squared from 0 to 1. " + BOXED,
         [(f"We integrate: {latex} \\approx 0.333 — so the value is \\boxed{{\\frac{{1}}{{3}}}}.", False),
          ("我们计算积分，得到三分之一。" * 3, True)])  # a Chinese answer to an English question
    case("zh_latex", "求 $\\int_0^1 x^2\\,dx$ 的值。",
         [(f"我们计算 {latex}。所以答案是 \\boxed{{\\frac{{1}}{{3}}}}。也可以写成 `1/3`，或 \\(\\tfrac{{1}}{{3}}\\)。", False),
          ("We compute the integral and get one third: \\boxed{\\frac{1}{3}}.", True)])
    # Greek variables do not make a question Greek
    case("greek_vars", "Let α and β be the roots of x^2 - 5x + 6 = 0. Find α + β.",
         [("By Vieta's formulas, α + β equals the negated linear coefficient, which is 5. \\boxed{5}", False)])
    # nor does a Chinese word quoted in an English question
    case("quoted_zh", "In Chinese math problems, what does the word 总数 mean, as in 总数是多少? Answer in English.",
         [("It means the total: the sum of all the items counted together.", False)])
    # a declared language beats the letters of the prompt
    case("declared_ja", "Translate into Japanese: Good morning, how are you?",
         [("おはようございます。お元気ですか？", False), ("Good morning! How are you doing today?", True)], language="ja")
    case("declared_zh_cn", "Answer briefly: what is twelve minus five?",
         [("十二减五等于七。", False)], language="zh_CN")
    return prompts, samples, expected


def test_language_mix_knows_the_scripts_and_reads_the_question(tmp_path):
    prompts, samples, expected = _language_case()
    _, cfg = _run(tmp_path, extra="rules: [language_mix]", prompts=prompts, samples=samples)
    clean.run(cfg)
    assert _rejects(cfg) == expected


def test_pandas_baseline_agrees_on_every_language(tmp_path):
    """The bench's pandas baseline must drop the same rows as DuckDB, non-Latin text included."""
    prompts, samples, _ = _language_case()
    chinese, eval_zh = _zh(random.Random(1), 40), ZH_EVAL
    prompts += [_prompt("ev", eval_zh, split="eval"), _prompt("leak", f"请解答：{eval_zh}", reference="10"),
                _prompt("zh_near", chinese)]
    samples += [_sample("ev", 0, "七支。", split="eval"), _sample("leak", 0, "等于十。", answer="\\boxed{10}"),
                _sample("zh_near", 0, chinese)]
    rules = ", ".join(bench_clean.RULES)
    _, cfg = _run(tmp_path, extra=f"rules: [{rules}]", prompts=prompts, samples=samples)
    clean.run(cfg)
    run = cfg.run_dir
    verdicts = pq.read_table(run / "clean/verdicts.parquet").to_pandas()[["sample_id", "correct", "invalid_call"]]
    dropped = bench_clean.pandas_clean(cfg, run / "generate/generations", run / "prepare/prompts.parquet",
                                       pd.DataFrame(verdicts))
    assert dropped == _rejects(cfg)
    assert {"language_mix", "contaminated"} <= set(dropped.values())
