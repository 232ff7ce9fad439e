"""Checks of a config's inputs before any job runs: headers, JSON and texts, no weights (``plan``: the
workflow's ``Plan``); bad input fails here in one line naming its config key (``ConfigError``)."""

from __future__ import annotations

from ..errors import PipelineError
from .config_checks import ConfigError


def has_chat_template(model_dir) -> bool:
    """Whether an HF model directory's tokenizer carries a chat template (files only, nothing loaded)."""
    import json
    from pathlib import Path

    d = Path(model_dir)
    if (d / "chat_template.jinja").is_file() or (d / "chat_template.json").is_file():
        return True
    config = d / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


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
    if plan.prompts and not plan.produced(plan.prompts):
        from ..evaluation.prompts import load_prompts

        try:
            load_prompts(plan.prompts)
        except PipelineError as e:
            raise ConfigError("evaluation.prompts", str(e)) from None
    if plan.prompts and base is not None and not has_chat_template(base.path):
        raise ConfigError(
            "evaluation.prompts", f"{plan.base}: its tokenizer has no chat template, which the generation checks need"
        )
    if plan.lm_eval and not plan.produced(plan.lm_eval["include_path"]):
        from ..lmeval import run_tasks

        try:  # the tasks exist and none needs prompt log-probs from llama-server: lm-eval itself reads them
            run_tasks(
                "http://127.0.0.1", "llama-server", plan.lm_eval["include_path"], plan.lm_eval["tasks"], check_only=True
            )
        except PipelineError as e:
            raise ConfigError("evaluation.lm_eval", str(e)) from None
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
    """The group size against the base's rows (an adapter does not change them), where a listed scheme quantizes in
    groups, and the calibration text's length in the base's tokens."""
    from transformers import AutoTokenizer

    from ..hfquant import calibration_windows, group_size_for, scheme

    try:
        if any(scheme(s).grouped for s in plan.hfq["schemes"]):
            group_size_for(base_dir, plan.hfq["group_size"])
    except PipelineError as e:
        raise ConfigError("hf_quant.group_size", str(e)) from None
    if not plan.produced(plan.hfq["text"]):
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
        try:
            calibration_windows(tokenizer, plan.hfq["text"], plan.hfq["samples"], plan.hfq["seq_len"])
        except PipelineError as e:
            raise ConfigError("hf_quant.text", str(e)) from None
