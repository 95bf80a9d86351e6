"""Cross-tokenizer alignment against naive references: pieces spell the text's bytes, groups close
exactly at the byte boundaries both tokenizations share, the vocabulary map sends a grouped
teacher numeral to the student's first digit, merged candidates add their probabilities, and a
student that spells other bytes is an AlignmentError, not a silent misalignment."""
import numpy as np
import pytest
from transformers import AutoTokenizer

from pipeline import crosstok

TEXTS = ["Ava has 201 apples. Ben gives Ava 35 more apples, so 201 + 35 = 236.",
         "我有三个苹果，她给了我两个。一共有 5 个？",
         "  spaces\tand\nnewlines 1000000 and 7.25 ",
         "</think>The answer is \\boxed{42}."]


@pytest.fixture(scope="module")
def tokenizers(tiny_tokenizer_dir, student_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir), AutoTokenizer.from_pretrained(student_tokenizer_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_spell_the_text_bytes(tokenizers, text):
    for tok in tokenizers:
        pieces = crosstok.token_bytes(tok)
        ids = tok.encode(text, add_special_tokens=False)
        assert b"".join(pieces[i] for i in ids) == text.encode()
        assert pieces[tok.eos_token_id] is None  # control tokens spell nothing


def _naive_groups(t_lens, s_lens):
    """Common cumulative byte boundaries of both sides, and the tokens between consecutive ones."""
    t_ends, s_ends = np.cumsum(t_lens).tolist(), np.cumsum(s_lens).tolist()
    common = sorted(set(t_ends) & set(s_ends))
    out, t0, s0 = [], 0, 0
    for boundary in common:
        t1, s1 = t_ends.index(boundary) + 1, s_ends.index(boundary) + 1
        out.append((t0, t1, s0, s1))
        t0, s0 = t1, s1
    return out


@pytest.mark.parametrize("text", TEXTS)
def test_groups_close_where_both_sides_share_a_byte_boundary(tokenizers, text):
    teacher, student = tokenizers
    t_bytes, s_bytes = crosstok.token_bytes(teacher), crosstok.token_bytes(student)
    t_ids = teacher.encode(text, add_special_tokens=False) + [teacher.eos_token_id]
    s_ids, groups = crosstok.student_ids_and_groups(t_ids, t_bytes, crosstok.eos_ids(teacher), student, s_bytes)
    assert s_ids[:-1] == student.encode(text, add_special_tokens=False) and s_ids[-1] == student.eos_token_id
    text_groups = _naive_groups([len(t_bytes[i]) for i in t_ids[:-1]], [len(s_bytes[i]) for i in s_ids[:-1]])
    eos = (len(t_ids) - 1, len(t_ids), len(s_ids) - 1, len(s_ids))
    assert groups == text_groups + [eos]


def test_numerals_map_to_the_students_first_digit(tokenizers):
    teacher, student = tokenizers
    m = crosstok.build_vocab_map(teacher, student)
    vocab = teacher.get_vocab()
    grouped = [t for t in vocab if t.lstrip("Ġ").isdigit() and len(t.lstrip("Ġ")) > 1]
    assert grouped, "the tiny teacher's BPE should hold multi-digit pieces"
    for piece in grouped:
        i = vocab[piece]
        digits = piece.lstrip("Ġ")
        first = student.encode(teacher.convert_tokens_to_string([piece]), add_special_tokens=False)[0]
        assert m.kind[i] == crosstok.FIRST_PIECE and m.student_id[i] == first
        assert student.convert_ids_to_tokens(int(first)).lstrip("Ġ") in (digits[0], "")
    same = [t for t in vocab if t in student.get_vocab() and vocab[t] not in crosstok.control_ids(teacher)]
    assert all(m.kind[vocab[t]] == crosstok.EXACT and m.student_id[vocab[t]] == student.get_vocab()[t] for t in same)
    assert m.student_id[teacher.eos_token_id] == student.eos_token_id
    assert m.student_id[teacher.convert_tokens_to_ids("<|im_start|>")] == -1  # a role marker: nothing


def test_merged_candidates_add_their_probabilities():
    vmap = crosstok.VocabMap(np.array([5, 5, 7, -1, 9], dtype=np.int32), np.zeros(5, dtype=np.int8))
    ids, lps = crosstok.map_topk(np.array([0, 1, 2, 3, 4]), np.log([0.3, 0.2, 0.1, 0.05, 0.35]), vmap)
    assert ids.tolist() == [5, 9, 7, -1, -1]
    np.testing.assert_allclose(np.exp(lps[:3]), [0.5, 0.35, 0.1], rtol=1e-6)
    assert np.isneginf(lps[3:]).all()


def test_align_places_topk_on_group_starts_and_chunk_logprobs_on_the_rest(tokenizers):
    teacher, student = tokenizers
    t_bytes, s_bytes = crosstok.token_bytes(teacher), crosstok.token_bytes(student)
    vmap = crosstok.build_vocab_map(teacher, student)
    t_ids = np.array(teacher.encode(TEXTS[0], add_special_tokens=False) + [teacher.eos_token_id])
    rng = np.random.default_rng(0)
    sampled = -rng.random(len(t_ids)).astype(np.float32)
    top_ids = np.stack([t_ids] + [rng.integers(0, len(teacher), len(t_ids)) for _ in range(3)], axis=1)
    top_lps = np.sort(np.log(rng.dirichlet(np.ones(5), len(t_ids))[:, :4]), axis=1)[:, ::-1].astype(np.float32)
    a = crosstok.align(t_ids, sampled, top_ids, top_lps, t_bytes, crosstok.eos_ids(teacher), student, s_bytes, vmap)
    _, groups = crosstok.student_ids_and_groups(t_ids.tolist(), t_bytes, crosstok.eos_ids(teacher), student, s_bytes)
    assert a.group_sizes.sum() == len(a.student_ids) and len(a.group_sizes) == len(groups)
    for g, (t0, t1, s0, s1) in enumerate(groups):
        if t1 - t0 == 1:  # the teacher's candidates, mapped, on the group's first student token
            expected = crosstok.map_topk(top_ids[t0], top_lps[t0], vmap)
            assert a.topk_ids[s0].tolist() == expected[0].tolist()
        else:
            assert (a.topk_ids[s0] == -1).all()
        assert (a.topk_ids[s0 + 1:s1] == -1).all()
        if t1 - t0 == 1 and s1 - s0 == 1:
            assert np.isnan(a.chunk_logprobs[g])
        else:
            assert a.chunk_logprobs[g] == pytest.approx(float(sampled[t0:t1].sum()), abs=1e-5)
    assert a.one_to_one == sum(1 for t0, t1, s0, s1 in groups if t1 - t0 == 1 and s1 - s0 == 1)
    assert 0 < a.one_to_one < len(groups)  # the numerals make groups that are not one-to-one


def test_student_that_spells_other_bytes_is_an_alignment_error(tiny_tokenizer_dir, tmp_path):
    from tokenizers import normalizers, pre_tokenizers

    from tests.conftest import make_tokenizer

    lower = make_tokenizer(tmp_path / "lower", pre_tokenizers.ByteLevel(add_prefix_space=False),
                           ["<pad>", "<s>", "</s>"], 300, "</s>", normalizer=normalizers.Lowercase())
    teacher, student = AutoTokenizer.from_pretrained(tiny_tokenizer_dir), AutoTokenizer.from_pretrained(lower)
    t_ids = teacher.encode("Ava has 3 apples.", add_special_tokens=False)
    with pytest.raises(crosstok.AlignmentError, match="do not spell the teacher's bytes"):
        crosstok.student_ids_and_groups(t_ids, crosstok.token_bytes(teacher), set(), student,
                                        crosstok.token_bytes(student))


def test_half_a_character_is_spelled_with_the_students_byte_pieces(tokenizers):
    teacher, student = tokenizers
    t_bytes, s_bytes = crosstok.token_bytes(teacher), crosstok.token_bytes(student)
    lone = t_bytes.index(b"\xe4")  # the first byte of a 3-byte character, sampled alone
    t_ids = teacher.encode("Ava", add_special_tokens=False) + [lone] + teacher.encode(" has 12", add_special_tokens=False)
    s_ids, groups = crosstok.student_ids_and_groups(t_ids, t_bytes, set(), student, s_bytes)
    assert b"".join(s_bytes[i] for i in s_ids) == b"Ava\xe4 has 12"
    assert s_bytes.index(b"\xe4") in s_ids and groups[-1][1] == len(t_ids) and groups[-1][3] == len(s_ids)
