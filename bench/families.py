"""Real tokenizers and chat templates for test models, from the pinned llama.cpp tree (never downloaded).

llama.cpp ships the vocabularies of real models (``models/ggml-vocab-*.gguf``) with test vectors: strings
(``.inp``) and the ids the original Hugging Face tokenizer gives them (``.out``), and real chat templates
(``models/templates/*.jinja``). Here each becomes an HF tokenizer directory:

- qwen2, phi-3, gpt-2: transformers rebuilds them from the GGUF exactly (every vector reproduced);
- llama-bpe (Llama 3): transformers' rebuild drops two settings of the real tokenizer.json -- ``ignore_merges``
  in the BPE model and the ``<|begin_of_text|>`` post-processor -- so it tokenizes like Smaug's tokenizer
  (llama.cpp's converter then rightly labels it ``smaug-bpe``); both are restored here;
- llama-spm (Llama 2): rebuilt from the GGUF's pieces and scores as a sentencepiece model (``tokenizer.model``),
  which is what the real checkpoint ships and what llama.cpp's converter reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from loraforge.llamacpp.toolchain import cache_root, locate


def models_dir() -> Path:
    return locate().root / "models"


def vectors(vocab: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's test vectors for a vocabulary: (text, ids of the original HF tokenizer)."""
    d = models_dir()
    texts = (d / f"ggml-vocab-{vocab}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = (d / f"ggml-vocab-{vocab}.gguf.out").read_text(encoding="utf-8").split("\n")
    return [(t, [int(x) for x in i.split()]) for t, i in zip(texts, ids, strict=False)]


def template(name: str) -> str:
    return (models_dir() / "templates" / name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Family:
    """A model family: architecture, its real vocabulary and chat template, and its end-of-turn tokens."""

    name: str
    arch: str  # HF model_type
    vocab: str  # ggml-vocab-<vocab>.gguf
    template: str | None = None  # models/templates/<template>
    eos: str | None = None  # the instruct model's EOS (end of turn), when it differs from the vocabulary's
    stops: tuple[str, ...] = ()  # generation_config eos_token_id, besides the EOS
    pad: str | None = None
    added: tuple[str, ...] = field(default=())  # pieces the template needs, added to a sentencepiece vocabulary
    note: str = ""


FAMILIES = {
    f.name: f
    for f in (
        Family(
            "llama3",
            "llama",
            "llama-bpe",
            "meta-llama-Llama-3.1-8B-Instruct.jinja",
            eos="<|eot_id|>",
            stops=("<|end_of_text|>",),
        ),
        Family("llama2", "llama", "llama-spm"),
        Family(
            "qwen2",
            "qwen2",
            "qwen2",
            "Qwen-Qwen2.5-7B-Instruct.jinja",
            eos="<|im_end|>",
            pad="<|endoftext|>",
            stops=("<|endoftext|>",),
        ),
        Family(
            "phi3", "phi3", "phi-3", "microsoft-Phi-3.5-mini-instruct.jinja", eos="<|endoftext|>", stops=("<|end|>",)
        ),
        Family("gpt2", "gpt2", "gpt-2"),
        Family(
            "mistral",
            "mistral",
            "llama-spm",
            "mistralai-Mistral-Nemo-Instruct-2407.jinja",
            note="Mistral-7B's tokenizer is a 32000-piece sentencepiece model like Llama 2's; the tree has no "
            "Mistral vocabulary, so Llama 2's stands in ([INST] is plain text in both)",
        ),
        Family(
            "gemma2",
            "gemma2",
            "llama-spm",
            "google-gemma-2-2b-it.jinja",
            stops=("<end_of_turn>",),
            added=("<start_of_turn>", "<end_of_turn>"),
            note="the tree has Gemma 4's vocabulary only (a 'gemma4' tokenizer type that transformers cannot "
            "read from GGUF and llama.cpp's gemma2 converter does not take); Llama 2's sentencepiece "
            "model with Gemma's two turn tokens added stands in",
        ),
    )
}


def _gguf_fields(vocab: str) -> dict:
    from gguf import GGUFReader

    r = GGUFReader(models_dir() / f"ggml-vocab-{vocab}.gguf")
    return {k: f.contents() for k, f in r.fields.items() if k.startswith("tokenizer.")}


def _spm_tokenizer(
    vocab: str,
    out: Path,
    extra: tuple[str, ...] = (),
    prefix_space: bool = True,
    add_bos: bool = True,
    rstrip: bool = False,
):
    """A sentencepiece tokenizer (Llama 2, Phi-3) rebuilt from the GGUF's pieces, scores and types, with
    ``extra`` user-defined pieces appended (as Gemma's turn tokens are in its model), loaded by transformers.

    Pieces after the sentencepiece model proper (Phi-3's chat markers and padding, the first control piece
    after </s>) become the tokenizer's added tokens, as in the real checkpoint. ``rstrip``: they and </s> eat the
    whitespace after them, as Phi-3's do in its tokenizer.json (and in llama.cpp, for a model named phi3)."""
    import sentencepiece.sentencepiece_model_pb2 as sp
    from tokenizers import Tokenizer, decoders, normalizers
    from transformers import AddedToken, LlamaTokenizer, PreTrainedTokenizerFast

    f = _gguf_fields(vocab)
    kinds = sp.ModelProto.SentencePiece
    pieces = list(
        zip(f["tokenizer.ggml.tokens"], f["tokenizer.ggml.scores"], f["tokenizer.ggml.token_type"], strict=True)
    )
    n = next((i for i, (_p, _s, k) in enumerate(pieces) if i > 2 and k == kinds.CONTROL), len(pieces))
    pieces, added = pieces[:n], [p for p, _s, _k in pieces[n:]]
    pieces[:3] = [
        (pieces[0][0], 0.0, kinds.UNKNOWN),
        (pieces[1][0], 0.0, kinds.CONTROL),
        (pieces[2][0], 0.0, kinds.CONTROL),
    ]
    pieces += [(p, 0.0, kinds.USER_DEFINED) for p in extra]
    proto = sp.ModelProto()
    proto.trainer_spec.model_type = sp.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(pieces)
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, 1, 2
    proto.trainer_spec.pad_id = -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = prefix_space
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for piece, score, kind in pieces:
        p = proto.pieces.add()
        p.piece, p.score, p.type = piece, score, kind
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(proto.SerializeToString())
    slow = LlamaTokenizer.from_pretrained(str(out), add_bos_token=add_bos, add_eos_token=False)
    # merges ranked as sentencepiece ranks them, by the score of the merged piece (transformers ranks by id,
    # which puts "▁▁", scored -1e9, first)
    score = {p: s for p, s, _k in pieces}
    state = json.loads(slow.backend_tokenizer.to_str())
    merges = [m if isinstance(m, list) else m.split(" ") for m in state["model"]["merges"]]
    state["model"]["merges"] = sorted(merges, key=lambda m: -score.get(m[0] + m[1], -1e10))
    backend = Tokenizer.from_str(json.dumps(state))
    # Llama 2's own tokenizer.json: "▁" prepended to the text and every space replaced, no pre-tokenizer (what
    # transformers calls legacy); transformers 5 builds a Metaspace pre-tokenizer instead, which differs on
    # leading spaces (15 of llama.cpp's 47 vectors)
    prepend = [normalizers.Prepend("▁")] if prefix_space else []
    backend.normalizer = normalizers.Sequence([*prepend, normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", int(prefix_space), 0),
        ]
    )
    eos = AddedToken("</s>", rstrip=True, special=True, normalized=False) if rstrip else "</s>"
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token=eos, unk_token="<unk>")
    # control and user-defined pieces (chat markers) are matched whole in text, as sentencepiece does
    special = [p for i, (p, _s, k) in enumerate(pieces) if i > 2 and k in (kinds.CONTROL, kinds.USER_DEFINED)]
    special += added
    if special:
        strip = [rstrip and p != "<|endoftext|>" for p in special]
        tokens = [AddedToken(p, rstrip=r, special=True, normalized=False) for p, r in zip(special, strip, strict=True)]
        tok.add_special_tokens({"additional_special_tokens": tokens})
    return tok


def _llama3_tokenizer():
    from tokenizers import Tokenizer, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = AutoTokenizer.from_pretrained(str(models_dir()), gguf_file="ggml-vocab-llama-bpe.gguf")
    state = json.loads(tok.backend_tokenizer.to_str())
    state["model"]["ignore_merges"] = True
    n = len(_gguf_fields("llama-bpe")["tokenizer.ggml.tokens"])  # transformers appends an <|endoftext|>: not Llama 3's
    state["added_tokens"] = [t for t in state["added_tokens"] if t["id"] < n]
    backend = Tokenizer.from_str(json.dumps(state))
    bos = "<|begin_of_text|>"
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token="<|end_of_text|>")


# each family's tokenizer files, built once per machine (Llama 3's took 34 s to convert from llama.cpp's vocabulary,
# Qwen2's 15 s, in every process that needed them: each pytest worker, each benchmark) into loraforge's cache and
# copied from there: the same bytes every time, for the same vocabulary, this file and the same tokenizer libraries
_BUILT: dict[Family, Path] = {}


def tokenizer_cache(family: Family) -> Path:
    """Where the family's built tokenizer is kept: named by everything that makes its bytes."""
    from importlib.metadata import version

    vocab = models_dir() / f"ggml-vocab-{family.vocab}.gguf"
    what = [repr(family), str(vocab), vocab.stat().st_size, Path(__file__).read_text(encoding="utf-8")]
    what += [version("transformers"), version("tokenizers")]
    key = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]
    return cache_root() / "tokenizers" / f"{family.name}-{key}"


def build_tokenizer(family: Family, out: Path):
    """The family's real tokenizer and chat template, saved in ``out``; returns the tokenizer."""
    from transformers import AutoTokenizer

    if family not in _BUILT:
        saved = tokenizer_cache(family)
        if not saved.is_dir():  # it appears whole or not at all: built aside, then renamed into place
            saved.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{saved.name}.", dir=saved.parent))
            tmp.chmod(0o755)  # copied with the files: a model directory others may read, as save_pretrained makes it
            try:
                _save_tokenizer(family, tmp)
                try:
                    os.rename(tmp, saved)
                except OSError:  # another process (a pytest worker) renamed its build first: the same bytes
                    if not saved.is_dir():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        _BUILT[family] = saved
    shutil.copytree(_BUILT[family], out, dirs_exist_ok=True)
    return AutoTokenizer.from_pretrained(str(out))


def _save_tokenizer(family: Family, out: Path) -> None:
    from transformers import AutoTokenizer

    if family.vocab in ("llama-spm", "phi-3"):
        tok = _spm_tokenizer(
            family.vocab,
            out,
            family.added,
            prefix_space=family.arch != "gemma2",
            add_bos=family.arch != "phi3",  # Phi-3.5 adds no BOS: its template has none
            rstrip=family.arch == "phi3",
        )
    elif family.vocab == "llama-bpe":
        tok = _llama3_tokenizer()
    else:
        tok = AutoTokenizer.from_pretrained(str(models_dir()), gguf_file=f"ggml-vocab-{family.vocab}.gguf")
    if family.eos:
        tok.eos_token = family.eos
    if family.pad:
        tok.pad_token = family.pad
    if family.template:
        tok.chat_template = template(family.template)
    tok.save_pretrained(str(out))


def stop_ids(family: Family, tok) -> list[int]:
    return sorted({tok.eos_token_id, *(tok.convert_tokens_to_ids(t) for t in family.stops)})


# per architecture: the linear layers a LoRA adapter targets, and whether the family ties embeddings
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def build_model(family: Family, out: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A tiny model of the family's architecture with its real tokenizer, template and end-of-turn tokens."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    tok = build_tokenizer(family, out)
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, initializer_range=0.08
    )
    if family.arch == "gpt2":
        cfg = AutoConfig.for_model(
            "gpt2", n_embd=hidden, n_layer=layers, n_head=4, n_positions=128, n_ctx=128, **common
        )
    else:
        extra = {"head_dim": hidden // 4, "query_pre_attn_scalar": hidden // 4} if family.arch == "gemma2" else {}
        cfg = AutoConfig.for_model(
            family.arch,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
            tie_word_embeddings=family.arch in ("qwen2", "gemma2"),
            **extra,
            **common,
        )
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=stop_ids(family, tok), pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(str(out))
    return out
