"""Measured quality of every artifact: perplexity, KL-divergence and top-1 agreement against a reference.

The reference (:mod:`.reference`) is the merged HF model computed in float32; every artifact of that model --
the adapter applied through PEFT, the merged model in its own dtype, the float GGUF, each quantized GGUF -- is
scored on exactly the same tokens (:mod:`.windows`) by a scorer (:mod:`.scorers`), into one typed record
(:class:`.metrics.Metrics`). Scoring is numpy: evaluating a GGUF does not load torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import PipelineError
from ..forms import Kind, form
from ..io.hashing import WORKFLOW_HASH_CACHE, HashCache, hashed_meanwhile, sha256_file, tree_fingerprint
from ..io.publish import write_text_atomic
from ..progress import Progress
from .metrics import GATES, Metrics, TextScorer, check_gates, kld_stats
from .reference import compute_reference, load_reference
from .windows import token_windows

log = logging.getLogger(__name__)

KINDS = tuple(k.value for k in Kind)


def _artifact_size(path: Path) -> int:
    if path.is_dir():  # an HF model or a compressed-tensors checkpoint: its weights
        return sum(f.stat().st_size for f in path.glob("*.safetensors"))
    return path.stat().st_size


def changed_since_built(path, check_json) -> str:
    return (
        f"{path}: content changed since it was built (its sha256 is not the one {check_json} recorded); "
        f"rebuild it (snakemake --forcerun {path}) or restore it"
    )


def verify_built(path, check_json, hashes: HashCache | None = None) -> str | None:
    """``path``'s sha256 (a directory's tree fingerprint) when its build sidecar ``check_json`` recorded one (refused
    if it differs), else None. With ``hashes`` a file hashed before and not touched since (same size, mtime, inode
    and ctime: an edit in place changes the ctime) is not read again: every LoRA evaluation verifies the shared base
    GGUF, 16 GB at 8B."""
    expected = json.loads(Path(check_json).read_text()).get("sha256") if check_json else None
    if not expected:
        return None
    if Path(path).is_dir():
        sha = tree_fingerprint(path, hashes)
    else:
        sha = hashes.sha256(path) if hashes is not None else sha256_file(path)
    if sha != expected:
        raise PipelineError(changed_since_built(path, check_json))
    return sha


def _same_tokens(scorer, text_file, windows: np.ndarray, gguf) -> bool:
    """Whether llama.cpp tokenizes the text (from the GGUF's own vocabulary) into the ids that are scored, as users
    of the GGUF will feed it; a difference fails the evaluation, since its numbers would not be theirs."""
    from .windows import read_text

    body = windows[:, 1:] if scorer.adds_bos() else windows
    want = body.reshape(-1).tolist()
    got = scorer.tokenize(read_text(text_file))[: len(want)]
    if got != want:
        i = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
        raise PipelineError(
            f"{gguf}: llama.cpp tokenizes {text_file} differently from the HF tokenizer the "
            f"reference used, at token {i}: the scores would not be what llama.cpp users get"
        )
    return True


def _scorer(kind: Kind, path, n_ctx: int, threads: int, base_dir, adapters, batch: int, lora=None, budget_mb=None):
    from .scorers import GGUFScorer, hf_scorer, peft_scorer

    if (kind is Kind.LORA) != (lora is not None):
        raise PipelineError("kind lora takes the base GGUF as path and the LoRA GGUF as lora, and only it does")
    if kind in (Kind.GGUF, Kind.LORA):
        return GGUFScorer(path, n_ctx, threads, lora)
    if kind is Kind.HF:
        return hf_scorer(path, batch=batch, budget_mb=budget_mb, n_ctx=n_ctx)
    if kind is Kind.PEFT:
        return peft_scorer(base_dir, adapters, batch=batch, budget_mb=budget_mb, n_ctx=n_ctx)
    from .scorers import checkpoint_scorer  # Kind.CHECKPOINT, Kind.CHECKPOINT_LORA

    return checkpoint_scorer(path, adapters if form(kind).takes_adapters else None, batch=batch, budget_mb=budget_mb)


def evaluate(
    kind: str,
    path=None,
    reference=None,
    texts: dict[str, str] | None = None,
    n_ctx: int = 128,
    max_tokens: int = 4096,
    threads: int = 1,
    base_dir=None,
    adapters=None,
    batch: int = 8,
    label: str = "",
    lora=None,
    budget_mb: float | None = None,
    answers=None,
    checked: dict | None = None,
    _hashes: dict | None = None,
) -> Metrics:
    """Score one artifact. ``kind``: gguf (a GGUF file), lora (the base GGUF ``path`` with the LoRA GGUF ``lora``
    applied by llama.cpp at scale 1), hf (a model dir, own dtype), peft (base+adapters). HF and PEFT models that
    do not fit ``budget_mb`` (MB) stream layer by layer; a GGUF is memory-mapped by llama.cpp.

    With ``reference`` the windows come from it and KLD/top-1/ΔPPL are measured; without, only PPL (on
    ``texts``, tokenized with the artifact's tokenizer). ``_hashes``: sha256 of ``path`` / ``lora`` already
    verified against their build sidecars (a GGUF is hashed once per evaluation, not twice). ``answers``: the
    adapter's reference answers (:func:`.generation.reference_answers`): an HF or PEFT form answers the same prompts
    through transformers, on the model just scored (a GGUF answers through llama-server: :func:`evaluate_artifact`).
    ``checked``: a GGUF's scores of the reference's first window from its build check
    (:func:`.reference.window_scores`, the same bytes: :func:`evaluate_artifact` verifies them), counted in instead
    of scored again where they are of this reference.
    """
    hashes = _hashes or {}
    kind = form(kind).kind  # an unknown kind fails here, before anything loads
    t_load = time.time()
    if reference is not None:
        info, tokens, lps = load_reference(reference)
        n_ctx = info["n_ctx"]
    else:
        if not texts:
            raise PipelineError("evaluation without a reference needs texts")
        tok_dir = path if kind is Kind.HF else base_dir
        tokens = {n: token_windows(tok_dir, p, n_ctx, max_tokens) for n, p in texts.items()}
        lps = {n: None for n in tokens}
    reused = _checked_window(checked, reference, info) if checked and kind is Kind.GGUF and reference else None
    scorer = _scorer(kind, path, n_ctx, threads, base_dir, adapters, batch, lora, budget_mb)
    load_s = time.time() - t_load
    t0 = time.time()
    per_text, all_kld = {}, []
    skip = {reused["text"]: reused["windows"]} if reused else {}
    todo = sum(w[skip.get(n, 0) :].size for n, w in tokens.items())
    progress = Progress(f"evaluating {label or path}", todo, "tokens")
    try:
        for name, windows in tokens.items():
            extra = {}
            if form(kind).llama_cpp and reference is not None:
                extra["llama_cpp_tokens_agree"] = _same_tokens(scorer, info["texts"][name]["file"], windows, path)
            acc = TextScorer(windows, lps[name])
            if name in skip:
                acc.add_scores({k: np.asarray(reused[k])[None] for k in ("nll", "ref_nll", "kld", "top1")})
            for logits in scorer.logits(windows[skip.get(name, 0) :]):
                acc.add(logits)
                progress.update(logits.shape[0] * logits.shape[1])
            per_text[name] = acc.result(**extra)
            if (k := acc.kld()) is not None:
                all_kld.append(k)
        loaded = scorer.info()  # size facts from this load, not a second one
        generation = None
        if answers is not None and form(kind).answers_through == "transformers":
            generation = _transformers_generation(scorer, path if kind is Kind.HF else base_dir, answers, label)
    finally:
        scorer.close()
    progress.close()
    eval_s = time.time() - t0
    n = sum(t.scored_tokens for t in per_text.values())
    summary: dict = {}
    if all_kld:
        summary = {
            **kld_stats(np.concatenate(all_kld)),
            "top1_agreement": sum(t.top1_agreement * t.scored_tokens for t in per_text.values()) / n,
            "max_delta_ppl": max(t.delta_ppl for t in per_text.values()),
        }
    if path and kind is not Kind.PEFT:
        summary["size_bytes"] = _artifact_size(Path(path))
        if Path(path).is_file():
            summary["artifact_sha256"] = hashes.get("path") or sha256_file(path)
        elif hashes.get("path"):  # a checkpoint directory, verified against its build sidecar
            summary["artifact_sha256"] = hashes["path"]
        if "bits_per_weight" in loaded and not lora:
            summary["bits_per_weight"] = loaded["bits_per_weight"]
    if "memory_plan" in loaded:
        summary["memory_plan"] = loaded["memory_plan"]
    if loaded.get("compute_dtype"):
        summary["compute_dtype"] = loaded["compute_dtype"]
    if kind is Kind.CHECKPOINT_LORA:  # the adapter vLLM loads beside the base's checkpoint
        adapter_bytes = sum(_artifact_size(Path(a["path"])) for a in adapters)
        summary.update(lora=str(adapters[0]["path"]), lora_bytes=adapter_bytes)
        summary["size_bytes"] += adapter_bytes
    if lora:
        lora_bytes = Path(lora).stat().st_size
        summary.update(lora=str(lora), lora_bytes=lora_bytes, lora_sha256=hashes.get("lora") or sha256_file(lora))
        summary["size_bytes"] += lora_bytes
    if generation is not None:
        summary.update(answer_summary(generation))
    return Metrics(
        label=label,
        artifact=str(path) if path else "peft:" + ",".join(str(a["path"]) for a in adapters),
        kind=kind.value,
        n_ctx=n_ctx,
        texts=per_text,
        scored_tokens=n,
        eval_seconds=round(eval_s, 3),
        load_seconds=round(load_s, 3),
        tokens_per_second=round(todo / eval_s, 1) if eval_s > 0 else None,
        from_check={"text": reused["text"], "windows": reused["windows"]} if reused else None,
        **summary,
    )


def _checked_window(checked: dict, reference, info: dict) -> dict | None:
    """A build check's scores of the reference's first window (:func:`.reference.window_scores`), where they are of
    this reference and its windows; else None (the window is scored here)."""
    first = next(iter(info["texts"]))
    if checked.get("text") != first or checked.get("n_ctx") != info["n_ctx"]:
        return None
    if checked.get("reference_sha256") != sha256_file(reference):
        log.info("%s: not the reference the build check scored against; its first window is scored here", reference)
        return None
    return checked


def answer_summary(generation: dict) -> dict:
    """The generation checks' headline numbers, as Metrics fields (what gates read)."""
    return {
        "stop_rate": generation["stop_rate"],
        "answers_identical": generation.get("identical_to_reference"),
        "answer_accuracy": generation["accuracy"],
        "generation": generation,
    }


def _transformers_generation(scorer, tokenizer_dir, answers, label: str) -> dict:
    import transformers

    from .generation import chat_tokenizer, generation_record, load_reference_answers, transformers_answers

    prompts, reference, info = load_reference_answers(answers)
    tok = chat_tokenizer(tokenizer_dir)
    got = transformers_answers(scorer.model, tok, prompts, info["max_tokens"], label)
    engine = f"transformers {transformers.__version__} ({scorer.compute_dtype})"
    return generation_record(
        prompts,
        got,
        reference,
        lambda text: tok.encode(text, add_special_tokens=False),
        info,
        engine,
        "the tokenizer's chat template",
    )


# a generation check's context: the longest conversation's tokens plus its answer (llama-server refuses more)
ANSWER_CTX = 4096


@contextlib.contextmanager
def gguf_server(gguf, lora, reference, answers, threads: int = 1, lm_eval: dict | None = None):
    """llama-server for what :func:`gguf_served` asks of a GGUF (or a base GGUF with a LoRA GGUF), started without
    waiting: it maps and loads the file while the caller scores it with llama.cpp's library (one page cache for
    both); stopped by its PID on exit."""
    from ..llamacpp.server import llama_server
    from ..serving import NEW_TOKENS, probe_prompt

    prompt = probe_prompt(reference) if reference is not None else None
    n_ctx = len(prompt) + NEW_TOKENS + 16 if prompt else 0
    if answers is not None or lm_eval:
        n_ctx = max(n_ctx, ANSWER_CTX)
    loras = [lora] if lora else None
    with llama_server(gguf, loras=loras, n_ctx=n_ctx, threads=threads, extra=["--no-warmup"], wait=False) as server:
        server.probe_prompt = prompt
        yield server


def gguf_served(
    server, reference, answers, label: str = "", lm_eval: dict | None = None
) -> tuple[dict | None, dict | None, dict | None]:
    """What llama-server (``server``, from :func:`gguf_server`) serves of a GGUF, or of a base GGUF with a LoRA GGUF:
    the probe (loraforge.serving) when there is a ``reference``, the answers to the generation checks' prompts with
    the template the GGUF carries (``--jinja``) when there are reference ``answers``, and the user's lm-eval tasks
    (``lm_eval``: include_path, tasks, limit) through lm-eval's local-chat-completions. One server for all three."""
    from ..llamacpp.toolchain import locate
    from ..serving import probe_llama_server
    from .generation import generation_record, llama_server_answers, llama_server_tokenizer, load_reference_answers

    server.ready()
    engine = f"llama-server ({locate().revision})"
    probe = generation = tasks = None
    if server.probe_prompt is not None:
        probe = {**probe_llama_server(server.url, server.probe_prompt), "engine": engine}
    if answers is not None:
        prompts, ref_answers, info = load_reference_answers(answers)
        got = llama_server_answers(server, prompts, info["max_tokens"], label)
        tokenize = llama_server_tokenizer(server)
        template = "the GGUF's own chat template (--jinja)"
        generation = generation_record(prompts, got, ref_answers, tokenize, info, engine, template)
    if lm_eval:
        from ..lmeval import run_tasks

        tasks = run_tasks(server.url, "llama-server", lm_eval["include_path"], lm_eval["tasks"], lm_eval.get("limit"))
        tasks["server"] = engine
    return probe, generation, tasks


def evaluate_artifact(
    out_json,
    label: str,
    gates: dict | None = None,
    check_json=None,
    lora_check_json=None,
    scored_json=None,
    hash_cache=WORKFLOW_HASH_CACHE,
    served=None,
    lm_eval: dict | None = None,
    answered=None,
    **kwargs,
) -> Metrics:
    """The evaluate_artifact rule: measure, then apply gates; a failing gate fails the rule, no JSON written.

    ``served``: a function of the measured Metrics that scores the artifact as it is served (vLLM:
    loraforge.vllm.scoring.served_check) and raises when that disagrees; what it returns is recorded as ``served``,
    its probe as ``probe``. A GGUF's probe comes from llama-server (:func:`gguf_served`): what
    ``loraforge-registry verify-served`` later compares a running server with. With ``answers`` (the adapter's
    reference answers) the artifact also answers the generation checks' prompts through its own serving path; with
    ``lm_eval`` a GGUF also runs the user's lm-eval tasks through the same llama-server. A vLLM form answers
    through ``answered``, a function that returns its generation record (loraforge.vllm.generation.vllm_answered),
    or None where this machine's vLLM cannot answer (a gate on the answers then fails as not measured).

    With ``check_json`` (a GGUF's build sidecar; ``lora_check_json`` the LoRA GGUF's), the file must still be the
    bytes that were built (hashed once per file state: ``hash_cache``, the workflow's, keyed by its stat).
    ``scored_json``: the sidecar of the float GGUF converted from this HF model, whose job scored the model beside
    llama.cpp's converter (loraforge.conversion.convert_artifact's ``score_merged``): those numbers, where they
    are of this reference, instead of a pass here (``scored_beside`` names the job)."""
    hashes, cache, pending = {}, HashCache(hash_cache), {}
    with contextlib.ExitStack() as meanwhile:
        for key, sidecar in (("path", check_json), ("lora", lora_check_json)):
            if not sidecar:
                continue
            record = json.loads(Path(sidecar).read_text())
            built = record.get("sha256")
            if key == "path" and record.get("evaluation_window") and not kwargs.get("lora"):
                kwargs["checked"] = record["evaluation_window"]  # of these bytes: verified below, as the hash is
            if built and Path(kwargs[key]).is_file() and cache.current(kwargs[key]) is None:
                # not hashed as it is now (Snakemake touches every output after its job): hashed by a background
                # thread while it is scored (only its BLAKE3 where the job that wrote it cached one: a fifth of
                # sha256's time, on a core the scoring wants), and refused before anything is written if it is
                # not what was built
                pending[key] = (meanwhile.enter_context(hashed_meanwhile(kwargs[key], cache)), built, sidecar)
                hashes[key] = built
            else:
                hashes[key] = verify_built(kwargs[key], sidecar, cache)
        cache.save()
        if scored_json:
            kwargs["scored"] = _scored_in(scored_json, kwargs)
        result = _measure(label, gates, hashes, served, lm_eval, answered, kwargs)
        for key, (digest, built, sidecar) in pending.items():
            if digest() != built:
                raise PipelineError(changed_since_built(kwargs[key], sidecar))
            cache.remember(kwargs[key], built, digest.blake3())
        cache.save()
    log.info("evaluation of %s: %s", label, json.dumps(result.to_json(), indent=1))
    failures = check_gates(result, gates, label)
    if failures:
        for f in failures[1:]:
            log.error("%s", f)
        raise PipelineError(failures[0] + (f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""))
    write_text_atomic(out_json, json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
    return result


def _scored_in(scored_json, kwargs) -> Metrics | None:
    """An HF model's numbers from its conversion job's sidecar (scored beside the converter), where they are of
    this reference; else None (the model is scored here)."""
    if form(kwargs["kind"]).kind is not Kind.HF or kwargs.get("answers") is not None:
        raise PipelineError(f"{scored_json}: only an HF model that answers no prompts is scored by its conversion")
    record = json.loads(Path(scored_json).read_text()).get("merged_evaluation")
    if not record:
        log.info("%s: the conversion did not score %s; scored here", scored_json, kwargs["path"])
        return None
    if record["reference_sha256"] != sha256_file(kwargs["reference"]):
        log.info("%s: not the reference the conversion scored %s against; scored here", scored_json, kwargs["path"])
        return None
    metrics = record["metrics"]
    if Path(metrics["artifact"]).resolve() != Path(kwargs["path"]).resolve():
        raise PipelineError(f"{scored_json}: scored {metrics['artifact']}, not {kwargs['path']}")
    return dataclasses.replace(Metrics.from_json(metrics), scored_beside=f"convert_to_gguf ({scored_json})")


def _measure(label, gates, hashes, served, lm_eval, answered, kwargs) -> Metrics:
    """:func:`evaluate_artifact`'s measuring: the engines' numbers, its served forms' and its answers."""
    through_vllm = kwargs.get("answers") is not None and form(kwargs["kind"]).answers_through == "vllm"
    if through_vllm and answered is None:
        raise PipelineError(f"{label}: answering through vLLM needs loraforge.vllm.generation.vllm_answered")
    serve_gguf = form(kwargs["kind"]).llama_cpp and (kwargs.get("reference") or kwargs.get("answers") or lm_eval)
    with contextlib.ExitStack() as stack:
        server = None
        if serve_gguf and not through_vllm:  # llama-server loads the GGUF while the library scores it
            server = stack.enter_context(
                gguf_server(
                    kwargs["path"],
                    kwargs.get("lora"),
                    kwargs.get("reference"),
                    kwargs.get("answers"),
                    kwargs.get("threads", 1),
                    lm_eval,
                )
            )
        scored = kwargs.pop("scored", None)
        measured = scored if scored is not None else evaluate(label=label, _hashes=hashes, **kwargs)
        result = dataclasses.replace(measured, label=label, gates=gates or {})
        if served is not None:
            vllm_numbers = dict(served(result))
            result = dataclasses.replace(result, served=vllm_numbers, probe=vllm_numbers.pop("probe", None))
        if through_vllm and (generation := answered()) is not None:  # None: vLLM cannot answer here (it said why)
            result = dataclasses.replace(result, **answer_summary(generation))
        elif server is not None:
            reference, answers = kwargs.get("reference"), kwargs.get("answers")
            probe, generation, tasks = gguf_served(server, reference, answers, label, lm_eval)
            result = dataclasses.replace(result, probe=probe, lm_eval=tasks)
            if generation is not None:
                result = dataclasses.replace(result, **answer_summary(generation))
    return result


__all__ = [
    "GATES",
    "Metrics",
    "check_gates",
    "compute_reference",
    "evaluate",
    "evaluate_artifact",
    "token_windows",
]
