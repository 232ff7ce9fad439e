"""Small readers shared by the preflight checks: JSON files and the names of weight and tokenizer files."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import PipelineError

WEIGHT_FILES_RE = re.compile(r"(\.safetensors|\.bin|\.pt|\.pth|\.gguf)$|^(model|pytorch_model)\..*index\.json$")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: is a directory, expected a JSON file") from None
    except (OSError, ValueError) as e:
        raise PipelineError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a JSON object")
    return data
