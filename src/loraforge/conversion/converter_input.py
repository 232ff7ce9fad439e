"""What llama.cpp's converter reads, made to say what the HF tokenizer says.

transformers 5 saves the types of added tokens (special or not) and whether BOS/EOS are added in tokenizer.json
only; llama.cpp's converter reads them from tokenizer_config.json (``added_tokens_decoder``, ``add_bos_token``,
``add_eos_token``), where transformers 4 wrote them. Without them, chat markers such as Gemma's
``<start_of_turn>`` become ordinary text pieces in a sentencepiece GGUF, and llama.cpp adds a BOS the HF
tokenizer does not (Phi-3). So when tokenizer_config.json lacks them, the converter gets a view of the model
directory (symlinks) whose tokenizer_config.json says what tokenizer.json does. The model directory itself is
never written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _missing_settings(model_dir: Path) -> dict:
    """What tokenizer_config.json lacks and tokenizer.json says: added_tokens_decoder, add_bos/eos_token."""
    cfg_path, tok_path = model_dir / "tokenizer_config.json", model_dir / "tokenizer.json"
    if not (cfg_path.is_file() and tok_path.is_file()):
        return {}
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    added = json.loads(tok_path.read_text(encoding="utf-8")).get("added_tokens") or []
    missing = {}
    if "added_tokens_decoder" not in cfg and added:
        keys = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
        missing["added_tokens_decoder"] = {str(t["id"]): {k: t[k] for k in keys if k in t} for t in added}
    if "add_bos_token" not in cfg or "add_eos_token" not in cfg:
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(tok_path)).encode("a", add_special_tokens=True).ids
        for key, name, pos in (("add_bos_token", "bos_token", 0), ("add_eos_token", "eos_token", -1)):
            token = cfg.get(name)
            token = token.get("content") if isinstance(token, dict) else token
            if key not in cfg and token is not None:
                tid = Tokenizer.from_file(str(tok_path)).token_to_id(token)
                missing[key] = bool(ids) and tid is not None and ids[pos] == tid
    return missing


def converter_input(model_dir, work: Path) -> Path:
    """``model_dir``, or a view of it in ``work`` whose tokenizer_config.json has what tokenizer.json says."""
    model_dir = Path(model_dir).resolve()
    missing = _missing_settings(model_dir)
    if not missing:
        return model_dir
    view = work / "converter-input"
    view.mkdir()
    for f in model_dir.iterdir():
        if f.name != "tokenizer_config.json":
            (view / f.name).symlink_to(f)
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg.update(missing)
    (view / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
    log.info(
        "tokenizer_config.json of %s lacks %s (transformers 5 keeps them in tokenizer.json): the converter "
        "gets them from tokenizer.json",
        model_dir,
        ", ".join(missing),
    )
    return view
