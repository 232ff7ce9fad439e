"""The tokenizer a merged model will carry (the base's, or the last adapter's that ships one), checked from its
files alone: present, readable, and no token id beyond the model's embedding."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ..errors import PipelineError


@functools.cache
def _tokenizer_json_size(path: Path, _stamp: tuple) -> int:
    """1 + the largest id in tokenizer.json (model vocabulary and added tokens)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PipelineError(f"{path}: unreadable tokenizer ({e})") from None
    vocab = (data.get("model") or {}).get("vocab")
    ids = []
    if isinstance(vocab, dict):
        ids = list(vocab.values())
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        ids = [len(vocab) - 1]
    ids += [t["id"] for t in data.get("added_tokens") or []]
    if not ids:
        raise PipelineError(f"{path}: tokenizer has no vocabulary")
    return max(ids) + 1


def _sentencepiece_size(path: Path) -> int:
    try:
        import sentencepiece.sentencepiece_model_pb2 as sp

        proto = sp.ModelProto()
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf raises DecodeError, which is not a ValueError
        raise PipelineError(f"{path}: unreadable sentencepiece model ({e})") from None
    if not proto.pieces:
        raise PipelineError(f"{path}: sentencepiece model has no pieces")
    return len(proto.pieces)


def tokenizer_size(model_dir: Path) -> tuple[Path, int]:
    """(the file that defines the tokenizer, 1 + its largest token id); one line when there is none."""
    d = Path(model_dir)
    tj = d / "tokenizer.json"
    if tj.is_file():
        st = tj.stat()
        return tj, _tokenizer_json_size(tj, (st.st_size, st.st_mtime_ns))
    if (d / "tokenizer.model").is_file():
        return d / "tokenizer.model", _sentencepiece_size(d / "tokenizer.model")
    if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
        try:
            vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise PipelineError(f"{d / 'vocab.json'}: unreadable ({e})") from None
        return d / "vocab.json", max(vocab.values()) + 1
    raise PipelineError(f"{d}: no tokenizer (tokenizer.json, tokenizer.model, or vocab.json with merges.txt)")


def check_tokenizer_fits(model_dir: Path, vocab_size: int) -> None:
    """The tokenizer in ``model_dir`` has no id the model's embedding of ``vocab_size`` rows cannot look up."""
    path, n = tokenizer_size(model_dir)
    if n > vocab_size:
        raise PipelineError(
            f"{path}: tokenizer has ids up to {n - 1}, but the model's embedding has only "
            f"{vocab_size} rows (vocab_size)"
        )
