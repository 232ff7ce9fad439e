"""A tiny, real, locally trained demo: base Llama + two LoRA adapters on different domains.

Nothing is downloaded. The corpora ship with Python itself: the standard library's source code ("code") and
the reference documentation in ``pydoc_data.topics`` ("prose"); the general text is Python's LICENSE.txt.
Everything is seeded; the whole demo trains in well under two minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sysconfig
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import PipelineError
from .io.publish import atomic_dir, write_text_atomic

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DOMAINS = ("code", "prose")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# hidden and intermediate sizes are multiples of 256 so K-quants (256-wide super-blocks) are real, not fallbacks
MODEL_SHAPE = dict(
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
VOCAB = 1024
SEQ = 128


def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _code_text(files: list[str]) -> str:
    parts = []
    for name in files:
        p = _stdlib() / name
        if not p.exists():
            raise PipelineError(f"{p}: standard library file needed by the demo corpus is missing")
        parts.append(p.read_text(encoding="utf-8"))
    return "\n\n".join(parts)


CODE_TRAIN = [
    "textwrap.py",
    "shlex.py",
    "fnmatch.py",
    "glob.py",
    "bisect.py",
    "heapq.py",
    "colorsys.py",
    "copy.py",
    "dataclasses.py",
]
CODE_HELDOUT = ["string.py", "keyword.py", "queue.py"]


def corpora() -> dict[str, dict[str, str]]:
    """domain -> {"train": text, "heldout": text}; plus "general" (held-out only)."""
    import pydoc_data.topics as topics

    names = sorted(topics.topics)
    prose_train = "\n\n".join(topics.topics[n] for n in names if hash_bucket(n) != 0)
    prose_held = "\n\n".join(topics.topics[n] for n in names if hash_bucket(n) == 0)
    lic = _stdlib() / "LICENSE.txt"
    if not lic.exists():
        raise PipelineError(f"{lic}: Python's license text (the demo's general text) is missing")
    return {
        "code": {"train": _code_text(CODE_TRAIN), "heldout": _code_text(CODE_HELDOUT)},
        "prose": {"train": prose_train, "heldout": prose_held},
        "general": {"heldout": lic.read_text(encoding="utf-8")},
    }


def hash_bucket(name: str, buckets: int = 5) -> int:
    """Deterministic split (Python's hash() is salted per process)."""
    return sum(name.encode()) % buckets


def write_texts(out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the held-out evaluation texts: code.txt, prose.txt, general.txt."""
    out = Path(out_dir)
    paths = {}
    for domain, parts in corpora().items():
        paths[domain] = out / f"{domain}.txt"
        write_text_atomic(paths[domain], parts["heldout"])
    return paths


def _batches(ids: torch.Tensor, steps: int, batch: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    n = ids.numel() - SEQ - 1
    for _ in range(steps):
        starts = torch.randint(0, n, (batch,), generator=g)
        x = torch.stack([ids[s : s + SEQ + 1] for s in starts.tolist()])
        yield x


def _train(model, ids: torch.Tensor, steps: int, lr: float, seed: int, batch: int = 16) -> list[float]:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / steps))
    losses = []
    model.train()
    for step, x in enumerate(_batches(ids, steps, batch, seed)):
        out = model(input_ids=x[:, :-1], labels=x[:, :-1])
        # labels shift inside the model; feed the extra token through the last position's target instead
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss))
        if step % 25 == 0 or step == steps - 1:
            log.info("step %d/%d loss %.3f", step + 1, steps, losses[-1])
    model.eval()
    return losses


def train_tokenizer(work: Path, text: str, seed: int, vocab: int = VOCAB) -> Path:
    """Train a sentencepiece BPE tokenizer on ``text``; save it as an HF tokenizer dir ``work/tok``.

    Trained from an iterator into memory: a file-based run records its input and output paths in the model,
    which would make the same tokenizer differ byte for byte between runs in different directories.
    """
    import io

    import sentencepiece as spm
    from transformers import LlamaTokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()),
        model_writer=model,
        vocab_size=vocab,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    tokdir = work / "tok"
    tokdir.mkdir()
    (tokdir / "tokenizer.model").write_bytes(model.getvalue())
    tok = LlamaTokenizer.from_pretrained(str(tokdir), local_files_only=True)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(tokdir))
    return tokdir


def encode(tokenizer, text: str) -> torch.Tensor:
    import torch

    return torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)


def build_base(out_dir: str | os.PathLike, seed: int = 0, steps: int = 200, dtype: str = "float32") -> dict:
    """Train a sentencepiece tokenizer and a tiny Llama on both domains; save an HF model dir."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    t0 = time.time()
    torch.manual_seed(seed)
    texts = corpora()
    general = texts["code"]["train"][:150_000] + "\n\n" + texts["prose"]["train"][:150_000]
    with atomic_dir(out_dir) as tmp:
        work = tmp / ".work"
        work.mkdir()
        train_tokenizer(work, general, seed)
        tok = AutoTokenizer.from_pretrained(str(work / "tok"), local_files_only=True)
        cfg = LlamaConfig(
            vocab_size=VOCAB,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            tie_word_embeddings=False,
            **MODEL_SHAPE,
        )
        model = LlamaForCausalLM(cfg)
        losses = _train(model, encode(tok, general), steps=steps, lr=3e-3, seed=seed)
        model = model.to(getattr(torch, dtype))
        model.generation_config = GenerationConfig(
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, max_new_tokens=64, do_sample=False
        )
        model.save_pretrained(str(tmp))
        for f in (work / "tok").iterdir():
            shutil.copy(f, tmp / f.name)
        shutil.rmtree(work)
    info = {"seconds": round(time.time() - t0, 1), "steps": steps, "final_loss": losses[-1], "seed": seed}
    log.info("demo base built in %s: %s", out_dir, info)
    return info


def train_adapter(
    base_dir: str | os.PathLike, domain: str, out_dir: str | os.PathLike, seed: int = 0, steps: int = 120, r: int = 16
) -> dict:
    """Train a LoRA adapter on one demo domain (all linear layers of the base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if domain not in DOMAINS:
        raise PipelineError(f"unknown demo domain {domain!r} (one of {', '.join(DOMAINS)})")
    t0 = time.time()
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32, local_files_only=True)
    lcfg = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = get_peft_model(model, lcfg)
    ids = encode(tok, corpora()[domain]["train"])
    losses = _train(model, ids, steps=steps, lr=4e-3, seed=seed + 1 + DOMAINS.index(domain))
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        # PEFT writes target_modules from a set (order follows the hash seed): sort it, same bytes every run
        cfg_path = tmp / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["target_modules"] = sorted(cfg["target_modules"])
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        meta = {
            "domain": domain,
            "steps": steps,
            "r": r,
            "seed": seed,
            "final_loss": losses[-1],
            "first_loss": losses[0],
        }
        (tmp / "training.json").write_text(json.dumps(meta, indent=2))
    log.info("adapter %s trained in %.1f s: %s", domain, time.time() - t0, meta)
    return meta
