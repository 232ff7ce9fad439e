"""merged HF model directory -> float GGUF with llama.cpp's converter, checked against the HF model's logits."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..checks import CHECK_TEXT, check_token_ids, compare_logits, hf_logits, write_sidecar
from ..errors import PipelineError
from ..io.hashing import hashed_as_written, remember_hash
from ..io.publish import atomic_file
from ..llamacpp.library import FLOAT_TYPES, GGUFModel, gguf_info
from ..llamacpp.toolchain import locate
from ..llamacpp.tools import convert_hf_to_gguf
from ..preflight import inspect_base
from .converter_input import converter_input
from .tokenizer_check import chat_server, check_chat_rendering, check_tokenizer

log = logging.getLogger(__name__)


# the converter's scratch directories (its view of the model, the metadata file), named by the owning process
SCRATCH_PREFIX = "loraforge-convert-"


def remove_stale_scratch(root: Path) -> None:
    """Scratch directories of conversions whose process is gone (killed: SIGKILL skips every cleanup)."""
    for d in root.glob(f"{SCRATCH_PREFIX}*-*"):
        pid = d.name[len(SCRATCH_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            log.info("removed %s, left by a conversion that was killed", d)
        except PermissionError:
            pass  # alive, another user's


def _convert_to(model_dir, out: Path, outtype: str, llama_cpp_dir=None, metadata: dict | None = None) -> dict:
    """Run the conversion into ``out``; the caller publishes it."""
    model = inspect_base(model_dir, what="model")
    outtype = outtype.lower()
    if outtype not in FLOAT_TYPES:
        raise PipelineError(f"unsupported outtype {outtype!r} (one of {', '.join(FLOAT_TYPES)})")
    if model.dtype == "BF16" and outtype == "f16":
        log.warning(
            "%s holds bfloat16 weights; writing F16 changes their precision (range and mantissa). "
            "Set convert.outtype: bf16 to keep them exactly.",
            model_dir,
        )
    elif model.dtype == "F32" and outtype != "f32":
        log.info("%s holds float32 weights; writing %s as configured", model_dir, FLOAT_TYPES[outtype])
    lc = locate(llama_cpp_dir)
    remove_stale_scratch(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as work:
        meta = None
        if metadata:  # llama.cpp's naming keys (general.name, basename, finetune, ...), else guessed from the path
            meta = Path(work) / "metadata.json"
            meta.write_text(json.dumps(metadata))
        convert_hf_to_gguf(
            converter_input(model_dir, Path(work)), out, outtype, lc=lc, shown_as=model_dir, metadata=meta
        )
    return {"source_dtype": model.dtype, "outtype": FLOAT_TYPES[outtype], "converter": lc.revision}


def _score_beside(stack, model_dir, reference, threads: int, budget_mb, label: str, batch: int):
    """The future of :func:`loraforge.evaluation.evaluate` of ``model_dir`` (kind hf) against ``reference``, run by
    a thread of ``stack`` with torch on ``threads`` - 1 threads (the converter is a child process: one Python
    thread), then the reference's sha256 beside its record."""
    from concurrent.futures import ThreadPoolExecutor

    from ..io.hashing import sha256_file

    def score() -> dict:
        import torch

        from ..evaluation import evaluate

        torch.set_num_threads(max(1, threads - 1))  # this job's only torch: the checks after it are llama.cpp's
        metrics = evaluate("hf", model_dir, reference, threads=1, batch=batch, budget_mb=budget_mb, label=label)
        return {"reference_sha256": sha256_file(reference), "metrics": metrics.to_json()}

    log.info("scoring %s beside llama.cpp's converter (torch on %d thread(s))", label, max(1, threads - 1))
    pool = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraforge-score"))
    return pool.submit(score)


def convert(
    model_dir: str | os.PathLike,
    out_gguf: str | os.PathLike,
    outtype: str = "f16",
    llama_cpp_dir: str | os.PathLike | None = None,
    metadata: dict | None = None,
) -> dict:
    """Convert an HF model directory to a float GGUF (f16, bf16 or f32). The file appears only when complete.

    ``metadata``: GGUF ``general.*`` keys to set (llama.cpp's ``--metadata``), e.g. ``general.basename``."""
    with atomic_file(out_gguf) as tmp:
        return _convert_to(model_dir, tmp, outtype, llama_cpp_dir, metadata)


def check_conversion(
    model_dir, gguf, text_file: str | None = None, threads: int = 1, budget_mb: float | None = None
) -> tuple[dict, dict]:
    """llama.cpp logits of the GGUF vs. the HF model's float32 logits on the fixed check text (the HF model
    streamed layer by layer when it does not fit ``budget_mb``).

    Returns (comparison, GGUF info) from the one load of the GGUF."""
    from ..models.streamed import inference_model

    ids = check_token_ids(model_dir, text_file)
    model = inference_model(model_dir, "float32", budget_mb, len(ids))
    ref, plan = hf_logits(model, ids), model.memory_plan
    del model
    with GGUFModel(Path(gguf), n_ctx=len(ids), threads=threads) as g:
        got, info = g.logits(ids), g.info()
    res = {**compare_logits(got, ref), "reference": "HF model, float32"}
    if budget_mb is not None:
        res["memory_plan"] = plan
    return res, info


def convert_artifact(
    model_dir,
    out_gguf,
    check_json,
    outtype: str = "f16",
    check: bool = True,
    min_top1: float = 0.98,
    max_abs_logit_diff: float = 1.0,
    check_text: str | None = None,
    threads: int = 1,
    llama_cpp_dir=None,
    metadata: dict | None = None,
    budget_mb: float | None = None,
    reference=None,
    hash_cache=None,
    evaluation_reference=None,
    score_merged: dict | None = None,
) -> dict:
    """The convert_to_gguf rule: convert; check the GGUF's tokenizer and chat template against the HF tokenizer
    and its logits against the HF model (or, given ``reference``, against that model's stored float32 log-probs:
    see loraforge.evaluation.reference.gguf_against_reference); publish GGUF and sidecar. ``max_abs_logit_diff``
    bounds the log-probs' largest difference where a reference is compared. ``hash_cache``: where the workflow's
    jobs look up file hashes (None: nowhere), seeded with the GGUF's. ``evaluation_reference``: the reference its
    evaluation uses, whose first window the check scores too (loraforge.evaluation.reference.window_scores).
    ``score_merged`` (``label``, ``batch``), with ``evaluation_reference``: the HF model (an adapter's merged
    model) is also scored against that reference, in its own dtype, on the cores the converter leaves idle (it is
    one Python thread): the sidecar's ``merged_evaluation``, which the model's evaluation job reads instead of
    running it again (loraforge.evaluation.evaluate_artifact's ``scored_json``)."""
    out_gguf = Path(out_gguf)
    window = None
    with contextlib.ExitStack() as beside, atomic_file(out_gguf) as tmp:
        scoring = None
        if score_merged is not None and evaluation_reference is not None:
            scoring = _score_beside(beside, model_dir, evaluation_reference, threads, budget_mb, **score_merged)
        # the hash reads the new GGUF as the converter writes it, on the core the converter leaves idle, then its
        # BLAKE3 once more while the checks run; llama-server maps it while the logits are compared
        with hashed_as_written(tmp) as digest, contextlib.ExitStack() as stack:
            summary = _convert_to(model_dir, tmp, outtype, llama_cpp_dir, metadata)
            digest.written()
            if check:
                server = stack.enter_context(chat_server(tmp, llama_cpp_dir, threads))
                texts = {"check": Path(check_text).read_text(encoding="utf-8") if check_text else CHECK_TEXT}
                summary["tokenizer"] = check_tokenizer(model_dir, tmp, texts, shown_as=out_gguf)
                if reference is not None:
                    from ..evaluation.reference import gguf_against_reference

                    res, info = gguf_against_reference(tmp, reference, threads, model_dir, evaluation_reference)
                    window = res.pop("evaluation_window", None)
                    diff = res["max_abs_logprob_diff"]
                else:
                    res, info = check_conversion(model_dir, tmp, check_text, threads, budget_mb)
                    diff = res["max_abs_logit_diff"]
                chat = check_chat_rendering(model_dir, tmp, llama_cpp_dir, threads, out_gguf, server)
                summary["tokenizer"].update(chat)
                log.info("tokenizer check passed: %s", summary["tokenizer"])
                res.update(min_top1=min_top1, max_abs_logit_diff_allowed=max_abs_logit_diff)
                summary["check"] = res
                if res["top1_agreement"] < min_top1 or not diff <= max_abs_logit_diff:
                    what = "log-prob" if reference is not None else "logit"
                    raise PipelineError(
                        f"{out_gguf}: llama.cpp logits disagree with the HF model (top-1 agreement "
                        f"{res['top1_agreement']:.3f}, min {min_top1}; max abs {what} diff {diff:.4g}, "
                        f"max {max_abs_logit_diff})"
                    )
                log.info("conversion check passed: %s", res)
            else:
                log.warning("conversion check disabled in config: GGUF logits were not compared with HF")
                info = gguf_info(tmp)
            summary.update(info, sha256=digest())  # what was built: registration refuses other bytes
        if scoring is not None:  # finished before the GGUF is published: a failed pass fails the job
            summary["merged_evaluation"] = scoring.result()
    if window:  # the evaluation's scores of the checked window: it scores the others only
        summary["evaluation_window"] = window
    remember_hash(out_gguf, summary["sha256"], hash_cache, digest.blake3())
    write_sidecar(check_json, summary)
    return summary
