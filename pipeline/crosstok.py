"""Cross-tokenizer distillation data: the teacher's stored ids, sampled logprobs and top-k, seen
through a student that has another tokenizer. Nothing new is captured at generation time.

    distill train configs/deepseek-r1.yaml          # R1 teacher, Qwen student: this module is the bridge

- `token_bytes`: the UTF-8 bytes each id stands for (byte-level BPE pieces decoded through the
  GPT-2 byte alphabet, SentencePiece pieces with U+2581 as a space and <0xNN> byte fallback,
  added tokens as their text). Control tokens (the declared BOS, EOS, padding) have no bytes.
- `VocabMap`: teacher id -> student id, built once per tokenizer pair and cached: an exact byte
  match, else the student's first piece of its spelling of those bytes (so a teacher numeral
  "201" teaches the student's "2"), the end-of-sequence token to the student's, other control
  tokens to nothing.
- `align`: the teacher's completion ids and the student's tokenization of the same text, walked
  by UTF-8 byte offsets into groups that close where both sides reach the same byte boundary
  (TRL GOLD's byte-offset alignment, done once at train-data build time). A group with one
  teacher token carries the teacher's top-k, mapped into the student's vocabulary, on its first
  student token; a group of any other shape carries the teacher's chunk log-probability (the sum
  of its stored sampled-token logprobs) for the ALM loss.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline import manifest
from pipeline.errors import PipelineError
from pipeline.files import atomic_path

UNMAPPED, EXACT, FIRST_PIECE, CONTROL = 0, 1, 2, 3  # VocabMap.kind values


class AlignmentError(ValueError):
    """A sample whose two tokenizations do not spell the same bytes."""


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable stand-ins for the 256 byte values, inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes, n = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, codes)}


def _scheme(tokenizer) -> str:
    """How a piece's string encodes bytes: byte_level (GPT-2 alphabet) or sentencepiece."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    text = json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
    if "ByteLevel" in text:
        return "byte_level"
    if "Metaspace" in text or "ByteFallback" in text or "\u2581" in text:
        return "sentencepiece"
    raise PipelineError(f"{getattr(tokenizer, 'name_or_path', 'tokenizer')}: neither a byte-level BPE nor a "
                        "SentencePiece tokenizer; cross-tokenizer alignment cannot read its pieces as bytes")


def control_ids(tokenizer) -> set[int]:
    """Ids that stand for no text: the tokenizer's declared special tokens (BOS, EOS, padding,
    unknown, additional specials). Other added tokens, R1's `<think>` and `</think>` among them,
    are text a student spells in its own pieces."""
    return set(tokenizer.all_special_ids)


def token_bytes(tokenizer) -> list[bytes | None]:
    """Bytes of every id (None for control tokens). Non-special added tokens, such as R1's
    `</think>`, are text: their content."""
    scheme = _scheme(tokenizer)
    decoder = _byte_decoder()
    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    out: list[bytes | None] = [None] * size
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    controls = control_ids(tokenizer)
    for piece, i in tokenizer.get_vocab().items():
        if i in controls:
            continue
        if i in added:
            out[i] = added[i].encode()
        elif scheme == "byte_level":
            try:
                out[i] = bytes(decoder[c] for c in piece)
            except KeyError:  # a piece outside the byte alphabet: its own text
                out[i] = piece.encode()
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out[i] = bytes([int(piece[3:5], 16)])
        else:
            out[i] = piece.replace("\u2581", " ").encode()
    return out


def eos_ids(tokenizer) -> set[int]:
    """Ids that end a completion: the tokenizer's EOS and the model's generation EOS ids."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config = Path(getattr(tokenizer, "name_or_path", "")) / "generation_config.json"
    if config.is_file():
        eos = json.loads(config.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids


# ---------------------------------------------------------------------------------------------
# The vocabulary map, once per tokenizer pair.


@dataclass
class VocabMap:
    student_id: np.ndarray  # [teacher vocab] int32, -1 where a teacher token has no student image
    kind: np.ndarray  # [teacher vocab] int8: UNMAPPED, EXACT, FIRST_PIECE or CONTROL

    def shares(self) -> dict:
        """Share of the teacher's vocabulary per kind (for the dry run and the manifest)."""
        n = len(self.kind)
        return {name: round(float((self.kind == k).sum()) / n, 4)
                for name, k in (("exact", EXACT), ("first_piece", FIRST_PIECE), ("control", CONTROL),
                                ("unmapped", UNMAPPED))}

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, student_id=self.student_id, kind=self.kind)

    @classmethod
    def load(cls, path: Path) -> VocabMap:
        with np.load(path) as z:
            return cls(z["student_id"], z["kind"])


def build_vocab_map(teacher, student) -> VocabMap:
    """Teacher id -> student id. Exact byte matches first; every other text token goes to the
    first piece of the student's spelling of its bytes (its tokenizer on valid UTF-8, else the
    longest student piece the bytes start with); the teacher's EOS ids go to the student's EOS;
    other control tokens map to nothing."""
    t_bytes, s_bytes = token_bytes(teacher), token_bytes(student)
    by_bytes: dict[bytes, int] = {}
    for i, b in enumerate(s_bytes):
        if b is not None and (b not in by_bytes or i < by_bytes[b]):
            by_bytes[b] = i
    longest = max((len(b) for b in by_bytes), default=0)
    student_id = np.full(len(t_bytes), -1, dtype=np.int32)
    kind = np.zeros(len(t_bytes), dtype=np.int8)
    spell: list[tuple[int, str]] = []
    for i, b in enumerate(t_bytes):
        if b is None or not b:
            continue
        if b in by_bytes:
            student_id[i], kind[i] = by_bytes[b], EXACT
            continue
        try:
            spell.append((i, b.decode("utf-8")))
        except UnicodeDecodeError:  # a partial character: the longest student piece it starts with
            prefix = next((b[:n] for n in range(min(len(b), longest), 0, -1) if b[:n] in by_bytes), None)
            if prefix is not None:
                student_id[i], kind[i] = by_bytes[prefix], FIRST_PIECE
    if spell:
        encodings = student.backend_tokenizer.encode_batch([s for _, s in spell], add_special_tokens=False)
        for (i, _), enc in zip(spell, encodings):
            if enc.ids:
                student_id[i], kind[i] = enc.ids[0], FIRST_PIECE
    if student.eos_token_id is not None:
        for i in eos_ids(teacher):
            if 0 <= i < len(student_id):
                student_id[i], kind[i] = student.eos_token_id, CONTROL
    return VocabMap(student_id, kind)


def vocab_map(teacher, student, cache: Path) -> VocabMap:
    """build_vocab_map, cached in `cache` (a file keyed by both tokenizers' identities)."""
    if cache.is_file():
        return VocabMap.load(cache)
    m = build_vocab_map(teacher, student)
    m.save(cache)
    return m


# ---------------------------------------------------------------------------------------------
# One sample.


@dataclass
class Aligned:
    """A teacher completion as the student sees it. P = student completion tokens."""

    student_ids: list[int]  # [P]
    topk_ids: np.ndarray  # [P, k] int32 student ids, -1 = no candidate (only a group's first token has any)
    topk_logprobs: np.ndarray  # [P, k] float32 teacher logprobs, mapped and merged; -inf where no candidate
    group_sizes: np.ndarray  # [G] int32 student tokens per group (sum = P)
    chunk_logprobs: np.ndarray  # [G] float32 teacher log-probability of the group's bytes; NaN for 1:1 groups
    one_to_one: int  # groups of one teacher and one student token
    teacher_tokens: int  # teacher completion tokens
    text_bytes: int  # UTF-8 bytes of the completion text


def _text_groups(t_lens: list[int], s_lens: list[int]) -> list[tuple[int, int, int, int]]:
    """Two tokenizations of the same bytes (their pieces' byte lengths) -> groups that close where
    both reach the same byte boundary: (teacher start, teacher end, student start, student end)."""
    out = []
    t = s = t0 = s0 = 0
    t_end, s_end = 0, 0
    while t < len(t_lens) or s < len(s_lens):
        if t_end <= s_end and t < len(t_lens):
            t_end += t_lens[t]
            t += 1
        else:
            s_end += s_lens[s]
            s += 1
        if t_end == s_end and (t, s) != (t0, s0):
            out.append((t0, t, s0, s))
            t0, s0 = t, s
    return out


def student_ids_and_groups(teacher_ids, t_bytes: list[bytes | None], teacher_eos: set[int], student,
                           s_bytes: list[bytes | None]) -> tuple[list[int], list[tuple[int, int, int, int]]]:
    """The student's tokens for a teacher completion and the groups that align them.

    Each run of teacher text tokens is decoded and tokenized by the student (text is aligned only
    within a run); a teacher EOS becomes the student's EOS, a group of its own; other teacher
    control tokens spell nothing and form groups with no student side. Groups are (teacher start,
    teacher end, student start, student end), ends exclusive. Raises AlignmentError when the two
    sides do not spell the same bytes."""
    s_ids: list[int] = []
    out: list[tuple[int, int, int, int]] = []
    run_start = 0

    def text_run(a: int, b: int) -> None:
        if a == b:
            return
        data = b"".join(t_bytes[t] for t in teacher_ids[a:b])
        ids = _spell(data, student, s_bytes)
        pieces = [s_bytes[i] if i < len(s_bytes) else None for i in ids]
        if any(not p for p in pieces) or b"".join(pieces) != data:
            raise AlignmentError(f"the student's pieces do not spell the teacher's bytes (teacher tokens {a}-{b})")
        base = len(s_ids)
        out.extend((a + t0, a + t1, base + s0, base + s1)
                   for t0, t1, s0, s1 in _text_groups([len(t_bytes[t]) for t in teacher_ids[a:b]], list(map(len, pieces))))
        s_ids.extend(ids)

    for i, t in enumerate(teacher_ids):
        if t < len(t_bytes) and t_bytes[t]:
            continue
        text_run(run_start, i)
        run_start = i + 1
        if t in teacher_eos and student.eos_token_id is not None:
            s_ids.append(student.eos_token_id)
            out.append((i, i + 1, len(s_ids) - 1, len(s_ids)))
        else:
            out.append((i, i + 1, len(s_ids), len(s_ids)))
    text_run(run_start, len(teacher_ids))
    return s_ids, out


def _spell(data: bytes, student, s_bytes: list[bytes | None]) -> list[int]:
    """The student's pieces for some bytes: its tokenizer on each stretch of valid UTF-8, and its
    single-byte pieces for bytes that are not (a teacher can sample half a character)."""
    text = data.decode("utf-8", "surrogateescape")  # invalid bytes become U+DC80..U+DCFF
    if not any("\udc80" <= c <= "\udcff" for c in text):
        return student.backend_tokenizer.encode(text, add_special_tokens=False).ids
    single = {b: i for i, b in enumerate(s_bytes) if b is not None and len(b) == 1}
    ids: list[int] = []
    for stretch in re.split("([\udc80-\udcff])", text):
        if len(stretch) == 1 and "\udc80" <= stretch <= "\udcff":
            byte = bytes([ord(stretch) - 0xDC00])
            if byte not in single:
                raise AlignmentError(f"the student has no piece for byte {byte!r}, which the teacher sampled alone")
            ids.append(single[byte])
        elif stretch:
            ids += student.backend_tokenizer.encode(stretch, add_special_tokens=False).ids
    return ids


def align(teacher_ids: np.ndarray, sampled_logprobs: np.ndarray, topk_ids: np.ndarray, topk_logprobs: np.ndarray,
          t_bytes: list[bytes | None], teacher_eos: set[int], student, s_bytes: list[bytes | None],
          vmap: VocabMap) -> Aligned:
    """One teacher completion ([P_t] ids and sampled logprobs, [P_t, k] top-k) -> Aligned."""
    s_ids, grouped = student_ids_and_groups(teacher_ids.tolist(), t_bytes, teacher_eos, student, s_bytes)
    k = topk_ids.shape[1]
    P = len(s_ids)
    ids = np.full((P, k), -1, dtype=np.int32)
    lps = np.full((P, k), -np.inf, dtype=np.float32)
    sizes, chunks = [], []
    one_to_one = 0
    for t0, t1, s0, s1 in grouped:
        if s1 == s0:
            continue  # a teacher control token the student does not spell
        sizes.append(s1 - s0)
        if t1 - t0 == 1:
            ids[s0], lps[s0] = map_topk(topk_ids[t0], topk_logprobs[t0], vmap)
        if t1 - t0 == 1 and s1 - s0 == 1:
            one_to_one += 1
            chunks.append(np.nan)
        else:
            chunks.append(float(sampled_logprobs[t0:t1].sum()))
    text = sum(len(t_bytes[t]) for t in teacher_ids.tolist() if t < len(t_bytes) and t_bytes[t])
    return Aligned(s_ids, ids, lps, np.asarray(sizes, dtype=np.int32), np.asarray(chunks, dtype=np.float32),
                   one_to_one, len(teacher_ids), text)


def map_topk(ids: np.ndarray, logprobs: np.ndarray, vmap: VocabMap) -> tuple[np.ndarray, np.ndarray]:
    """A teacher top-k row [k] -> student ids and logprobs [k]: candidates that land on the same
    student id are merged (their probabilities add), unmapped ones dropped; padded with -1 / -inf,
    best first."""
    k = len(ids)
    mapped = vmap.student_id[ids]
    keep = mapped >= 0
    mapped, lp = mapped[keep], logprobs[keep].astype(np.float64)
    out_ids = np.full(k, -1, dtype=np.int32)
    out_lp = np.full(k, -np.inf, dtype=np.float32)
    if len(mapped):
        uniq, inverse = np.unique(mapped, return_inverse=True)
        top = np.full(len(uniq), -np.inf)
        np.logaddexp.at(top, inverse, lp)
        order = np.argsort(-top, kind="stable")
        out_ids[:len(uniq)], out_lp[:len(uniq)] = uniq[order], top[order]
    return out_ids, out_lp


# ---------------------------------------------------------------------------------------------
# Tokenizer pairs, for train and eval.


def load_tokenizer(model_dir: Path):
    """A model directory's tokenizer, or a one-line error naming the directory."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:  # missing or corrupt files surface as OSError, ValueError, JSON errors...
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise PipelineError(f"{model_dir}: cannot load its tokenizer ({type(e).__name__}: {detail})") from None


def vocabulary_mismatch(teacher_dir: Path, student_dir: Path) -> tuple[str, int, int | None] | None:
    """The first teacher token whose id differs in the student, as (token, teacher id, student id),
    or None when every teacher token has its id in the student (extra student tokens are fine)."""
    teacher, student = load_tokenizer(teacher_dir).get_vocab(), load_tokenizer(student_dir).get_vocab()
    return next(((tok, i, student.get(tok)) for tok, i in teacher.items() if student.get(tok) != i), None)


def tokenizer_sha(tokenizer) -> str:
    """The identity caches are keyed by: the hash of the files it was loaded from (no second load)."""
    return manifest.tokenizer_files_sha(tokenizer.name_or_path)


def pair(models_dir: Path, teacher_dir: Path, student) -> tuple:
    """What aligning a teacher's traces to a student with another tokenizer needs: (teacher
    tokenizer, its bytes per id, its EOS ids, the student's bytes per id, the vocabulary map),
    the map cached per tokenizer pair under <models_dir>/vocab-maps/."""
    teacher = load_tokenizer(teacher_dir)
    key = f"{tokenizer_sha(teacher)}-{tokenizer_sha(student)}"
    vmap = vocab_map(teacher, student, Path(models_dir) / "vocab-maps" / f"{key}.npz")
    return teacher, token_bytes(teacher), eos_ids(teacher), token_bytes(student), vmap
