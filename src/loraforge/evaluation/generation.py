"""Does it still answer? Greedy answers to chat prompts (:mod:`.prompts`) through each form's own serving path and
chat template, scored per artifact like every other number.

- A GGUF, and a base GGUF with a LoRA GGUF, answer through llama-server's OpenAI chat API with the template the
  GGUF carries (``--jinja``): what llama.cpp, Ollama and LM Studio users get.
- The merged HF model and the adapter through PEFT answer through transformers with the tokenizer's chat template.
- The reference answers are the adapter's through PEFT, unmerged, in float32 (:func:`reference_answers`, once per
  adapter): the model the adapter defines.

Per artifact (:func:`answer_metrics`): the stop rate (answers that end with the end-of-turn token within
``max_tokens``), agreement with the reference answers (identical answers; mean common prefix in tokens), the
prompts' scorers' accuracy with a bootstrap 95% interval over prompts, and tokens per second as served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import PipelineError
from ..io.publish import write_text_atomic
from ..progress import Progress
from .prompts import Prompt, bootstrap_ci, is_correct, load_prompts

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 600  # one answer of max_tokens; a server that takes longer fails the job in one line


@dataclass(frozen=True)
class Answer:
    id: str
    text: str
    finish: str  # "stop": ended with the end-of-turn token; "length": cut at max_tokens
    tokens: int  # generated tokens, the end-of-turn token included
    seconds: float  # the request's wall time, as a client sees it


# ---------------------------------------------------------------- engines


def llama_server_answers(server, prompts: list[Prompt], max_tokens: int, label: str = "") -> list[Answer]:
    """Greedy answers from a running llama-server's chat API (its template: the GGUF's, with ``--jinja``)."""
    out = []
    progress = Progress(f"answering {len(prompts)} prompts through llama-server {label}".rstrip(), len(prompts))
    for p in prompts:
        body = {"messages": p.messages, "max_tokens": max_tokens, "temperature": 0, "top_k": 1, "seed": 0}
        t0 = time.perf_counter()
        try:
            r = server.request("/v1/chat/completions", body, timeout=REQUEST_TIMEOUT_S)
        except TimeoutError:
            raise PipelineError(
                f"{label}: prompt {p.id}: no answer from llama-server within {REQUEST_TIMEOUT_S} s; its log: "
                f"{_tail(server.log_path)}"
            ) from None
        seconds = time.perf_counter() - t0
        choice = r["choices"][0]
        finish = "stop" if choice["finish_reason"] == "stop" else "length"
        tokens = int(r["usage"]["completion_tokens"])
        out.append(Answer(p.id, choice["message"]["content"] or "", finish, tokens, round(seconds, 4)))
        progress.update(1)
    progress.close()
    return out


def llama_server_tokenizer(server):
    """Token ids of a text from the GGUF's own vocabulary, as llama-server tokenizes it."""
    return lambda text: server.request("/tokenize", {"content": text, "add_special": False})["tokens"]


def _tail(path, n: int = 400) -> str:
    try:
        return " | ".join(Path(path).read_text(errors="replace")[-n:].splitlines())
    except OSError:
        return "(no log)"


def chat_tokenizer(model_dir):
    """The HF tokenizer of ``model_dir``, refused in one line when it has no chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if not tok.chat_template:
        raise PipelineError(f"{model_dir}: its tokenizer has no chat template: the generation checks need one")
    return tok


GENERATE_BATCH = 16  # prompts per transformers generate call (left-padded): one pass per token for all of them


def transformers_answers(model, tokenizer, prompts: list[Prompt], max_tokens: int, label: str = "") -> list[Answer]:
    """Greedy answers through transformers' ``generate`` with the tokenizer's chat template, ``GENERATE_BATCH``
    prompts at a time (left-padded; a CPU's time per token is mostly per-layer overhead, so a batch costs about what
    one prompt does); an answer stops at the generation config's end-of-turn tokens (and the tokenizer's EOS). Each
    answer's ``seconds`` is its batch's time over its size."""
    import torch

    plan = getattr(model, "memory_plan", None) or {}
    if plan.get("streamed"):
        raise PipelineError(
            f"{label}: the generation checks need the model whole in memory, and it is over memory.budget_mb "
            "(streamed layer by layer); raise the budget, or skip this form (evaluation.skip)"
        )
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    device = next(model.parameters()).device
    ids = [
        list(tokenizer.apply_chat_template(p.messages, add_generation_prompt=True, return_dict=True)["input_ids"])
        for p in prompts
    ]
    out = []
    progress = Progress(f"answering {len(prompts)} prompts through transformers {label}".rstrip(), len(prompts))
    with torch.no_grad():
        for s in range(0, len(prompts), GENERATE_BATCH):
            batch = ids[s : s + GENERATE_BATCH]
            width = max(len(r) for r in batch)
            input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in batch], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in batch], device=device)
            t0 = time.perf_counter()
            gen = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=sorted(eos),
                pad_token_id=pad,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            seconds = (time.perf_counter() - t0) / len(batch)
            for p, row in zip(prompts[s : s + GENERATE_BATCH], gen[:, width:].tolist(), strict=True):
                end = next((k for k, t in enumerate(row) if t in eos), None)  # finished rows are padded after it
                text = tokenizer.decode(row[:end] if end is not None else row, skip_special_tokens=False)
                finish, tokens = ("stop", end + 1) if end is not None else ("length", len(row))
                out.append(Answer(p.id, text, finish, tokens, round(seconds, 4)))
            progress.update(len(batch))
    progress.close()
    return out


# ---------------------------------------------------------------- scores


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def answer_metrics(
    prompts: list[Prompt], answers: list[Answer], reference: list[Answer] | None, tokenize, search_dir=None
) -> dict:
    """Stop rate, agreement with the reference answers, accuracy (bootstrap 95% interval), tokens per second."""
    rows, correct = [], []
    for p, a, r in zip(prompts, answers, reference or [None] * len(prompts), strict=True):
        row = {"id": p.id, "text": a.text, "finish": a.finish, "tokens": a.tokens}
        if r is not None:
            row["identical"] = a.text.strip() == r.text.strip()
            row["common_prefix_tokens"] = common_prefix(tokenize(a.text), tokenize(r.text))
        ok = is_correct(p, a.text, search_dir)
        if ok is not None:
            row["correct"] = ok
            correct.append(ok)
        rows.append(row)
    n = len(rows)
    seconds = sum(a.seconds for a in answers)
    out = {
        "n_prompts": n,
        "stop_rate": sum(a.finish == "stop" for a in answers) / n,
        "tokens_per_second": round(sum(a.tokens for a in answers) / seconds, 2) if seconds > 0 else None,
        "scored_prompts": len(correct),
        "accuracy": sum(correct) / len(correct) if correct else None,
        "accuracy_ci95": list(bootstrap_ci(correct)) if correct else None,
    }
    if reference is not None:
        out["identical_to_reference"] = sum(r["identical"] for r in rows) / n
        out["mean_common_prefix_tokens"] = sum(r["common_prefix_tokens"] for r in rows) / n
    out["answers"] = rows
    return out


# ---------------------------------------------------------------- the reference answers of an adapter


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def reference_answers(base_dir, adapters: list[dict], prompts_file, out, max_tokens: int, budget_mb=None) -> dict:
    """The adapter's answers through PEFT, unmerged, in float32 (the model the adapter defines), to every prompt:
    what every artifact's answers are compared with. Written to ``out`` (JSON) with the prompts themselves."""
    from ..models.peft import peft_model
    from ..models.streamed import plan_for
    from ..preflight import validate_inputs

    prompts = load_prompts(prompts_file)
    base, loaded = validate_inputs(base_dir, adapters)
    if plan_for(base.path, "float32", budget_mb, 256)["streamed"]:
        raise PipelineError(
            f"{base.path}: its reference answers need the model whole in float32, over memory.budget_mb; raise "
            "the budget or drop evaluation.prompts"
        )
    tokenizer = chat_tokenizer(base.path)
    model = peft_model(base.path, loaded, merge_all=False, dtype="float32", budget_mb=budget_mb).eval()
    answers = transformers_answers(model, tokenizer, prompts, max_tokens, "(reference: the adapter, float32)")
    metrics = answer_metrics(prompts, answers, None, None, Path(prompts_file).parent)
    record = {
        "prompts_file": str(prompts_file),
        "prompts_sha256": _sha256(prompts_file),
        "model": "peft:" + ",".join(str(a["path"]) for a in adapters),
        "dtype": "float32",
        "max_tokens": max_tokens,
        "prompts": [p.to_json() for p in prompts],
        "answers": [asdict(a) for a in answers],
        **{k: v for k, v in metrics.items() if k != "answers"},
    }
    write_text_atomic(out, json.dumps(record, indent=2) + "\n")
    log.info("reference answers: stop rate %.2f, accuracy %s", record["stop_rate"], record["accuracy"])
    return record


def load_reference_answers(path) -> tuple[list[Prompt], list[Answer], dict]:
    record = json.loads(Path(path).read_text())
    prompts = [Prompt(**p) for p in record["prompts"]]
    return prompts, [Answer(**a) for a in record["answers"]], record


def generation_record(prompts, answers, reference, tokenize, reference_info: dict, engine: str, template: str):
    """The ``generation`` entry of an artifact's metrics."""
    search_dir = Path(reference_info["prompts_file"]).parent
    metrics = answer_metrics(prompts, answers, reference, tokenize, search_dir)
    return {
        "engine": engine,
        "template": template,
        "max_tokens": reference_info["max_tokens"],
        "prompts_sha256": reference_info["prompts_sha256"],
        **metrics,
    }
