"""The demo's generation checks: chat prompts with checkable answers in each adapter's domain (Python code, Python's
documentation) and a general one, written as evaluation.prompts JSONL (loraforge.evaluation.prompts).

The answers are facts a small instruct model may or may not know; the accuracy is whatever each artifact scores,
and what the checks compare is each artifact's with its adapter's own (through PEFT, float32)."""

from __future__ import annotations

import json
import os

from ..io.publish import write_text_atomic


def _user(content: str) -> list[dict]:
    return [SYSTEM, {"role": "user", "content": content}]


SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer in one or two sentences."}

PROMPTS = [
    # code
    {
        "id": "code-def",
        "messages": _user("Which Python keyword starts a function definition?"),
        "expected": "def",
        "scorer": "contains",
    },
    {
        "id": "code-len",
        "messages": _user("In Python, what does len([4, 5, 6]) return?"),
        "expected": r"\b3\b",
        "scorer": "regex",
    },
    {
        "id": "code-square",
        "messages": _user("Write a Python function square(x) that returns x squared."),
        "expected": r"def square\(x\)",
        "scorer": "regex",
    },
    {
        "id": "code-comment",
        "messages": _user("Which character starts a comment in Python?"),
        "expected": "#",
        "scorer": "contains",
    },
    # prose: Python's documentation
    {
        "id": "docs-pep8",
        "messages": _user("What is the name of Python's style guide? Give its PEP number."),
        "expected": "8",
        "scorer": "contains",
    },
    {
        "id": "docs-none",
        "messages": _user("What value does a Python function return when it has no return statement?"),
        "expected": "None",
        "scorer": "contains",
    },
    {
        "id": "docs-immutable",
        "messages": _user("Is a Python tuple mutable or immutable?"),
        "expected": r"(?is)^(?!.*\bmutable\b).*\bimmutable\b",
        "scorer": "regex",
    },
    {
        "id": "docs-pip",
        "messages": _user("Which tool installs Python packages from PyPI?"),
        "expected": "pip",
        "scorer": "contains",
    },
    # general
    {
        "id": "gen-capital",
        "messages": _user("What is the capital of France?"),
        "expected": "Paris",
        "scorer": "contains",
    },
    {"id": "gen-sum", "messages": _user("What is 2 + 3?"), "expected": r"\b5\b", "scorer": "regex"},
    {
        "id": "gen-week",
        "messages": _user("How many days are in a week?"),
        "expected": r"(?i)\b(7|seven)\b",
        "scorer": "regex",
    },
    {"id": "gen-open", "messages": _user("Give me one tip for writing clear documentation.")},
]


def write_prompts(out: str | os.PathLike) -> None:
    write_text_atomic(out, "".join(json.dumps(p) + "\n" for p in PROMPTS))
