"""Fold LoRA/DoRA adapters into a base model: adapter(s) + base -> merged HF model directory.

``method="streaming"`` (default, :mod:`.streaming`) never loads the model and needs numpy only;
``method="peft"`` is PEFT's ``merge_and_unload`` (:mod:`.peft_reference`), kept as the reference.
The merge check (:mod:`.check`) compares the merged model with the adapters applied through PEFT.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from pathlib import Path

from ..errors import PipelineError
from ..io.hashing import WORKFLOW_HASH_CACHE, HashCache, sha256_file, tree_files, tree_fingerprint
from ..io.publish import atomic_dir
from ..preflight import Adapter, AdapterSpec, BaseModel, as_specs, is_embedding, validate_inputs
from ..preflight.adapter import tokenizer_source
from ..preflight.files import TOKENIZER_FILES, WEIGHT_FILES_RE

log = logging.getLogger(__name__)

METHODS = ("streaming", "peft")


def _copy_side_files(base: BaseModel, loaded: list[tuple[AdapterSpec, Adapter]], out: Path) -> Path:
    """Tokenizer, generation config and other small files of the base (the tokenizer of the last adapter that
    ships one, for added tokens)."""
    tok_src = tokenizer_source(base, [ad for _s, ad in loaded])
    for f in sorted(base.path.iterdir()):
        if f.is_file() and not WEIGHT_FILES_RE.search(f.name) and f.name != "config.json":
            if tok_src != base.path and f.name in TOKENIZER_FILES:
                continue
            shutil.copy2(f, out / f.name)
    if tok_src != base.path:
        for name in TOKENIZER_FILES:
            if (tok_src / name).exists():
                shutil.copy2(tok_src / name, out / name)
    return tok_src


def _write_config(base: BaseModel, loaded: list[tuple[AdapterSpec, Adapter]], out: Path) -> None:
    cfg = dict(base.config)
    for _spec, ad in loaded:
        for name, key in ad.replaced.items():
            if is_embedding(name):
                cfg["vocab_size"] = ad.tensors[key].shape[0]
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _merge_into(base: BaseModel, loaded, out: Path, method: str, shard_size_mb: int, on_shard=None, stop=None) -> dict:
    shard_bytes = int(shard_size_mb) * 1024 * 1024
    if method == "streaming":
        from .streaming import streaming_merge

        stats = streaming_merge(base, loaded, out, shard_bytes, on_shard, stop)
        _write_config(base, loaded, out)
    elif method == "peft":
        from .peft_reference import peft_merge

        stats = peft_merge(base.path, loaded, out, shard_bytes)
    else:
        raise PipelineError(f"unknown merge method {method!r} ({' or '.join(METHODS)})")
    tok_src = _copy_side_files(base, loaded, out)
    return {
        "method": method,
        "base_dtype": base.dtype,
        "tokenizer_from": str(tok_src),
        "adapters": [{"path": str(s.path), "weight": s.weight} for s, _ in loaded],
        **stats,
    }


def _check_out_dir(base: BaseModel, out_dir: Path) -> None:
    out = out_dir.resolve()
    if out == base.path.resolve() or base.path.resolve() in out.parents:
        raise PipelineError(f"{out_dir}: output must not be inside the base model directory")


def _merged_beside(meanwhile, merging):
    """``merging(stop)`` (the streaming merge: one core's numpy) in a thread of its own while ``meanwhile()`` (the
    adapter's float32 reference: torch, on the other cores) runs in this one; the merge's result. If ``meanwhile``
    fails, the merge is stopped before its next tensor; if the merge fails, its error is raised once ``meanwhile``
    is done (a torch pass cannot be stopped midway)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    stop = threading.Event()
    log.info("merging beside the reference's pass (the merge on one thread, torch on the others)")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraforge-merge") as pool:
        merged = pool.submit(merging, stop)
        try:
            meanwhile()
        except BaseException:
            stop.set()
            raise
        return merged.result()


def _publish(
    base_dir,
    adapters,
    out_dir,
    method: str,
    shard_size_mb: int,
    check: dict | None,
    hash_cache=None,
    meanwhile=None,
) -> dict:
    """Validate, merge into a temporary dir, optionally check it, then rename it to ``out_dir``. With
    ``hash_cache`` every file is hashed by a background thread as soon as it is written (each shard while the
    next one merges, the rest while the check runs), and the cache learns them under ``out_dir``: registration
    and the jobs after it need not read the merged model's gigabytes again to fingerprint it. ``meanwhile``: a
    function run beside the (streaming) merge, finished before the check (:func:`_merged_beside`)."""
    from concurrent.futures import ThreadPoolExecutor

    base, loaded = validate_inputs(base_dir, adapters)
    out_dir = Path(out_dir)
    _check_out_dir(base, out_dir)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraforge-hash") if hash_cache else None
    digests: dict[str, object] = {}  # path relative to the model directory -> the future of its sha256
    published = False
    try:
        with atomic_dir(out_dir) as tmp:
            on_shard = (lambda f: digests.setdefault(f.name, pool.submit(sha256_file, f))) if pool else None
            if meanwhile is None:
                summary = _merge_into(base, loaded, tmp, method, shard_size_mb, on_shard)
            else:
                summary = _merged_beside(
                    meanwhile, lambda stop: _merge_into(base, loaded, tmp, method, shard_size_mb, on_shard, stop)
                )
            if pool:
                for f in tree_files(tmp):
                    rel = f.relative_to(tmp).as_posix()
                    if rel not in digests:
                        digests[rel] = pool.submit(sha256_file, f)
            if check is not None:
                from .check import check_merged

                summary["check"] = check_merged(base, loaded, tmp, **check, shown_as=out_dir)
                log.info("merge check passed: %s", summary["check"])
            # each file hashed before the directory is renamed (the threads read it under its temporary name;
            # without the check nothing else took the time)
            hashed = {rel: digest.result() for rel, digest in digests.items()}
        published = True
        if pool:
            cache = HashCache(hash_cache)
            for rel, digest in hashed.items():
                cache.remember(out_dir / rel, digest)
            cache.save()
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=not published)
    log.info("merged %d adapter(s) into %s: %s", len(loaded), out_dir, summary)
    return summary


def _reference_streams(base_dir, budget_mb: float | None, n_ctx: int) -> bool:
    """Whether the adapter's float32 reference streams the base layer by layer (loraforge.models.streamed)."""
    from ..models.streamed import plan_for

    return budget_mb is not None and plan_for(base_dir, "float32", budget_mb, n_ctx)["streamed"]


def _on_threads(n: int, fn) -> None:
    """``fn()`` with torch's intra-op threads at ``n``, then back to what they were."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        fn()
    finally:
        torch.set_num_threads(before)


def merge(
    base_dir: str | os.PathLike,
    adapters,
    out_dir: str | os.PathLike,
    method: str = "streaming",
    shard_size_mb: int = 4096,
) -> dict:
    """Merge ``adapters`` (paths, dicts with path/weight, or AdapterSpec) into ``base_dir``; write ``out_dir``.

    Returns a summary dict. ``out_dir`` appears only when complete. ``base_dir`` is only read.
    """
    return _publish(base_dir, adapters, out_dir, method, shard_size_mb, check=None)


def input_lineage(base_dir, adapters, hash_cache=WORKFLOW_HASH_CACHE) -> dict:
    """Paths and content fingerprints of what a merge read: the lineage the registry records."""
    cache = HashCache(hash_cache)
    lineage = {
        "base_model": {"path": str(Path(base_dir).resolve()), "sha256": tree_fingerprint(base_dir, cache)},
        "adapters": [
            {"path": str(s.path.resolve()), "weight": s.weight, "sha256": tree_fingerprint(s.path, cache)}
            for s in as_specs(adapters)
        ],
    }
    cache.save()
    return lineage


def merge_artifact(
    base_dir,
    adapters,
    out_dir,
    check_json,
    method: str = "streaming",
    shard_size_mb: int = 4096,
    check: bool = True,
    check_text: str | None = None,
    max_kld: dict | None = None,
    budget_mb: float | None = None,
    reference=None,
    window_out=None,
    reference_out=None,
    texts: dict[str, str] | None = None,
    n_ctx: int = 128,
    max_tokens: int = 4096,
    batch: int = 8,
    threads: int = 1,
) -> dict:
    """The merge_adapter rule: merge, check against PEFT (its stored float32 ``reference`` where evaluation computes
    one), then publish the dir and its JSON sidecar (which records the inputs' content fingerprints); with
    ``window_out``, the merged model's float32 log-probs on the checked tokens too (see check_merged).

    With ``reference_out`` the job also computes that reference itself, on the evaluation ``texts`` (``n_ctx``,
    ``max_tokens``, ``batch``: loraforge.evaluation.compute_reference), after the inputs are validated: the adapter
    through PEFT, unmerged, float32, which the check then reads and every artifact of the adapter is measured
    against. With ``threads`` > 1, the streaming merge and a reference that streams (a base over ``budget_mb`` in
    float32), the reference's pass runs on ``threads`` - 1 of them beside the merge, which is one core's numpy: both
    then read the whole base from disk, for tens of seconds each (at 8B: about 70 s in turn, 62 s side by side). A
    smaller model's reference runs first, on every thread: its merge takes a second or so, and the reference would
    spend the rest of its pass on one thread."""
    from ..checks import write_sidecar

    meanwhile = None
    if reference_out is not None:
        from ..evaluation import compute_reference

        base, _ = validate_inputs(base_dir, adapters)  # bad input is refused before the reference's pass
        _check_out_dir(base, Path(out_dir))

        def reference_pass() -> None:
            compute_reference(base_dir, texts or {}, reference_out, n_ctx, max_tokens, batch, budget_mb, adapters)

        if method == "streaming" and threads > 1 and _reference_streams(base_dir, budget_mb, n_ctx):
            meanwhile = functools.partial(_on_threads, threads - 1, reference_pass)
        else:
            reference_pass()
        reference = reference_out
    if not check:
        log.warning("merge check disabled in config: merged logits will not be compared with PEFT")
    checking = None
    if check:
        checking = {"text_file": check_text, "max_kld": max_kld, "budget_mb": budget_mb}
        checking.update(reference=reference, window_out=window_out)
    summary = _publish(base_dir, adapters, out_dir, method, shard_size_mb, checking, WORKFLOW_HASH_CACHE, meanwhile)
    summary["inputs"] = input_lineage(base_dir, adapters)
    write_sidecar(check_json, summary)
    return summary
