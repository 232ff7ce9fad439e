"""The chat prompts of the generation checks (``evaluation.prompts``): a JSONL file, one conversation per line.

Each line is a JSON object::

    {"id": "capital", "messages": [{"role": "user", "content": "The capital of France?"}],
     "expected": "Paris", "scorer": "contains"}

``messages`` are OpenAI-style chat messages (roles system, user, assistant; the last one the user's). ``expected``
and ``scorer`` are optional: a prompt without them is still answered and counts in the stop rate and the agreement
with the reference answers. Scorers: ``exact`` (the answer, stripped, equals ``expected``; the default), ``contains``
(``expected`` occurs in the answer), ``regex`` (``expected`` is a Python regular expression found in the answer), or
``module:function`` (a user's function of ``(answer, expected)`` returning a bool, imported from the Python path, the
prompts file's directory or the working directory). Every problem is refused at load, in one line naming
``file:line`` (the workflow loads the file before any job runs).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PipelineError

ROLES = ("system", "user", "assistant")
BUILTIN = ("exact", "contains", "regex")
KEYS = {"id", "messages", "expected", "scorer"}


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: list[dict]
    expected: str | None = None
    scorer: str | None = None  # None: not scored for accuracy

    def to_json(self) -> dict:
        return {"id": self.id, "messages": self.messages, "expected": self.expected, "scorer": self.scorer}


def load_prompts(path) -> list[Prompt]:
    """The prompts of a JSONL file, each checked (see the module's doc); one line naming ``file:line`` otherwise."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such prompts file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: cannot read it as UTF-8 text ({e})") from None
    prompts, seen = [], {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        p = _prompt(where, line, n)
        if p.id in seen:
            raise PipelineError(f"{where}: id {p.id!r} is also line {seen[p.id]}'s")
        seen[p.id] = n
        if p.scorer:
            scorer_function(p.scorer, where, path.parent)
        prompts.append(p)
    if not prompts:
        raise PipelineError(f"{path}: no prompts (one JSON object per line)")
    return prompts


def _prompt(where: str, line: str, n: int) -> Prompt:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise PipelineError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise PipelineError(f"{where}: a line is a JSON object with messages, not {type(obj).__name__}")
    if unknown := sorted(set(obj) - KEYS):
        raise PipelineError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(sorted(KEYS))})")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise PipelineError(f"{where}: messages must be a non-empty list of chat messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise PipelineError(f"{where}: message {i} has no role")
        if m["role"] not in ROLES:
            raise PipelineError(f"{where}: message {i} has role {m['role']!r} (one of {', '.join(ROLES)})")
        if not isinstance(m.get("content"), str):
            raise PipelineError(f"{where}: message {i} has no text content")
        if set(m) - {"role", "content"}:
            raise PipelineError(f"{where}: message {i} has keys other than role and content")
    if messages[-1]["role"] != "user":
        raise PipelineError(f"{where}: the last message is the {messages[-1]['role']}'s; the model answers the user")
    expected, scorer = obj.get("expected"), obj.get("scorer")
    if expected is not None and not isinstance(expected, str):
        raise PipelineError(f"{where}: expected must be a string")
    if scorer is not None and (not isinstance(scorer, str) or not scorer):
        raise PipelineError(f"{where}: scorer must be exact, contains, regex or module:function")
    if expected is not None and scorer is None:
        scorer = "exact"
    if scorer in BUILTIN and expected is None:
        raise PipelineError(f"{where}: scorer {scorer} needs an expected answer")
    if scorer == "regex":
        try:
            re.compile(expected)
        except re.error as e:
            raise PipelineError(f"{where}: expected is not a valid regular expression ({e})") from None
    pid = obj.get("id", f"line-{n}")
    if not isinstance(pid, str) or not pid:
        raise PipelineError(f"{where}: id must be a non-empty string")
    return Prompt(pid, [dict(m) for m in messages], expected, scorer)


def scorer_function(name: str, where: str = "", search_dir=None) -> Callable[[str, str | None], bool]:
    """The function that scores an answer: a built-in one or ``module:function`` imported (refused in one line)."""
    if name == "exact":
        return lambda answer, expected: answer.strip() == expected.strip()
    if name == "contains":
        return lambda answer, expected: expected in answer
    if name == "regex":
        return lambda answer, expected: re.search(expected, answer) is not None
    module, _, func = name.partition(":")
    if not module or not func:
        raise PipelineError(f"{where}: scorer {name!r} is none of {', '.join(BUILTIN)} and not module:function")
    added = [str(d) for d in (search_dir, Path.cwd()) if d is not None and str(d) not in sys.path]
    sys.path[:0] = added
    try:
        fn = getattr(importlib.import_module(module), func, None)
    except Exception as e:  # noqa: BLE001 - a user's module: whatever its import raises is the one line
        raise PipelineError(f"{where}: scorer {name!r}: cannot import {module} ({type(e).__name__}: {e})") from None
    finally:
        for d in added:
            sys.path.remove(d)
    if not callable(fn):
        raise PipelineError(f"{where}: scorer {name!r}: {module} has no function {func}")
    return fn


def is_correct(prompt: Prompt, answer: str, search_dir=None) -> bool | None:
    """Whether ``answer`` is right by the prompt's scorer; None for a prompt without one."""
    if prompt.scorer is None:
        return None
    return bool(scorer_function(prompt.scorer, prompt.id, search_dir)(answer, prompt.expected))


def bootstrap_ci(values, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``values`` (0/1 outcomes per prompt), resampling prompts."""
    x = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
