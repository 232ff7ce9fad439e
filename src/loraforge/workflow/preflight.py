"""Checks of a config's inputs before any job runs: headers, JSON and texts, no weights (``plan``: the
workflow's ``Plan``); bad input fails here in one line naming its config key (``ConfigError``)."""

from __future__ import annotations

from ..errors import PipelineError
from .config_checks import ConfigError


def check_inputs(plan) -> None:
    """Bad input fails here, in a second, before any job runs: headers, JSON and texts only, no weights."""
    from ..compression import check_spec
    from ..evaluation.windows import read_text
    from ..preflight import inspect_base, validate_inputs
    from ..quantization.imatrix import overlap

    base_built = plan.produced(plan.base)
    base = None
    if not base_built:
        try:
            base = inspect_base(plan.base)
        except PipelineError as e:
            raise ConfigError("base_model", str(e)) from None
    for name in plan.adapters:
        specs = plan.adapter_specs(name)
        if base_built or any(plan.produced(s["path"]) for s in specs):
            continue
        try:
            validate_inputs(plan.base, specs)
        except PipelineError as e:
            # the base's own files (its tokenizer, which no adapter replaces) are the base's problem
            own = str(e).startswith((f"{plan.base}", f"{base.path}")) if base else False
            raise ConfigError("base_model" if own else f"adapters.{name}", str(e)) from None
    texts = {f"evaluation.texts.{n}": p for n, p in plan.texts.items()}
    if plan.config["checks"]["text"]:
        texts["checks.text"] = plan.config["checks"]["text"]
    if plan.imatrix:
        texts["quantize.imatrix.text"] = plan.imatrix["text"]
    if plan.compress:
        texts["compress.text"] = plan.compress["text"]
    if plan.hfq:
        texts["hf_quant.text"] = plan.hfq["text"]
    for key, path in texts.items():
        if not plan.produced(path):
            try:
                read_text(path)
            except PipelineError as e:
                raise ConfigError(key, str(e)) from None
    named = {n: p for n, p in plan.texts.items() if not plan.produced(p)}
    calibration = {
        "quantize.imatrix.text": (plan.imatrix or {}).get("text"),
        "compress.text": (plan.compress or {}).get("text"),
        "hf_quant.text": (plan.hfq or {}).get("text"),
    }
    for key, text in calibration.items():
        if text and not plan.produced(text):
            same = overlap(text, named)
            if same:
                raise ConfigError(
                    key,
                    f"{text} overlaps evaluation.texts.{same}: calibrating on evaluated text makes the scores "
                    "optimistic; use other text",
                )
    if base is not None and plan.hfq and plan.hfq_models():
        check_hf_quant(plan, base.path)
    if base is not None:
        n_ctx = plan.config["evaluation"]["n_ctx"]
        limit = base.config.get("max_position_embeddings")
        if plan.evaluate and limit and n_ctx > limit:
            raise ConfigError(
                "evaluation.n_ctx", f"{n_ctx} is more than the base model's context length ({limit}, config.json)"
            )
        if plan.compress:
            for spec_name, spec in plan.compress["specs"].items():
                try:
                    check_spec(spec, base.config, plan.row_multiple)
                except PipelineError as e:
                    raise ConfigError(f"compress.specs.{spec_name}", str(e)) from None


def check_hf_quant(plan, base_dir) -> None:
    """The group size against the base's rows (an adapter does not change them) and the calibration text's
    length in the base's tokens."""
    from transformers import AutoTokenizer

    from ..hfquant import calibration_windows, group_size_for

    try:
        group_size_for(base_dir, plan.hfq["group_size"])
    except PipelineError as e:
        raise ConfigError("hf_quant.group_size", str(e)) from None
    if not plan.produced(plan.hfq["text"]):
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
        try:
            calibration_windows(tokenizer, plan.hfq["text"], plan.hfq["samples"], plan.hfq["seq_len"])
        except PipelineError as e:
            raise ConfigError("hf_quant.text", str(e)) from None
