"""The GGUF's own tokenizer against the HF tokenizer it was converted from.

What users of llama.cpp, Ollama and LM Studio meet first when a conversion goes wrong is the tokenizer: a
pre-tokenizer the converter did not recognise, a chat template lost on the way, the wrong end-of-turn token
(endless output), tokens missing after a merge. So llama.cpp tokenizes the check texts from the GGUF itself
(its vocabulary, pre-tokenizer and special tokens) and the ids must equal the HF tokenizer's; the special ids,
``add_bos``, the end-of-turn tokens and the chat template string must match too.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from ..checks import bos_prefix
from ..errors import PipelineError

log = logging.getLogger(__name__)

# llama.cpp's own pre-tokenizer probe (convert_hf_to_gguf.py, get_vocab_base_pre): whitespace runs, digits of
# every length, emoji with joiners, Khmer, CJK, Cyrillic, quote runs and English contractions in odd cases.
PRETOKENIZER_PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
# Variables templates read from their environment, fixed for both engines: Llama 3.1's template writes "Today
# Date" from date_string, else strftime_now, which llama.cpp provides (today) and transformers does not (so it
# falls back to 26 Jul 2024); the check compares templates, not clocks.
CHAT_KWARGS = {"date_string": "26 Jul 2024"}
# a conversation for the chat check: the roles every template accepts, alternating
CHAT = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy? Answer in one word."},
]


@dataclass
class GGUFVocab:
    """A GGUF's tokenizer as llama.cpp loads it (vocabulary only, no weights)."""

    path: Path

    def __post_init__(self):
        from ..llamacpp.library import llama_cpp

        self.lc = llama_cpp()
        try:
            self.llm = self.lc.Llama(model_path=str(self.path), vocab_only=True, verbose=False)
        except Exception as e:  # llama-cpp-python raises ValueError on load failure
            raise PipelineError(f"{self.path}: llama.cpp could not load its vocabulary ({e})") from None
        self.vocab = self.lc.llama_model_get_vocab(self.llm._model.model)
        self.metadata = dict(self.llm.metadata)

    def tokenize(self, text: str, special: bool) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=special)

    def piece(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", "replace")

    def is_eog(self, token: int) -> bool:
        return bool(self.lc.llama_vocab_is_eog(self.vocab, token))

    def special_ids(self) -> dict[str, int | None]:
        def tid(f) -> int | None:
            t = f(self.vocab)
            return None if t < 0 else int(t)

        lc = self.lc
        return {
            "bos": tid(lc.llama_vocab_bos),
            "eos": tid(lc.llama_vocab_eos),
            "eot": tid(lc.llama_vocab_eot),
            "pad": tid(lc.llama_vocab_pad),
        }

    def add_bos(self) -> bool:
        return bool(self.lc.llama_vocab_get_add_bos(self.vocab))

    def close(self) -> None:
        self.llm.close()


def hf_stop_ids(model_dir: Path, tok) -> list[int]:
    """The ids generation stops at: the tokenizer's EOS and the generation config's eos_token_id list."""
    import json

    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    gen = model_dir / "generation_config.json"
    if gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return sorted(ids)


def render_chat(tok) -> str | None:
    """The check conversation rendered by the HF chat template (None when the tokenizer has none)."""
    if not tok.chat_template:
        return None
    return tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True, **CHAT_KWARGS)


def _first_difference(gguf: list[int], hf: list[int]) -> int | None:
    for i, (a, b) in enumerate(zip(gguf, hf, strict=False)):
        if a != b:
            return i
    return None if len(gguf) == len(hf) else min(len(gguf), len(hf))


def check_tokenizer(model_dir, gguf, texts: dict[str, str] | None = None, shown_as=None) -> dict:
    """Compare the GGUF's tokenizer with the HF tokenizer in ``model_dir``; raise one line on a mismatch.

    Returns what the sidecar records: tokenizer.ggml.model/pre, special ids, add_bos, whether the chat
    template was kept, and the number of tokens compared per text. Messages name ``shown_as`` (the file users
    will see) rather than ``gguf`` when given."""
    from transformers import AutoTokenizer

    model_dir, gguf = Path(model_dir), Path(gguf)
    shown = shown_as or gguf
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    v = GGUFVocab(gguf)
    try:
        meta = v.metadata
        record = {
            "model": meta.get("tokenizer.ggml.model"),
            "pre": meta.get("tokenizer.ggml.pre"),
            "special_ids": v.special_ids(),
            "add_bos": v.add_bos(),
            "chat_template_kept": "tokenizer.chat_template" in meta,
        }
        problems = []
        expected = {"bos": tok.bos_token_id, "eos": tok.eos_token_id}
        for name, want in expected.items():
            if want is not None and record["special_ids"][name] != want:
                problems.append(f"{name} token is {record['special_ids'][name]} in the GGUF, {want} in HF")
        if v.add_bos() != bool(bos_prefix(tok)):
            problems.append(f"add_bos is {v.add_bos()} in the GGUF, {bool(bos_prefix(tok))} in HF")
        stops = hf_stop_ids(model_dir, tok)
        record["stop_ids"] = stops
        not_eog = [t for t in stops if not v.is_eog(t)]
        if not_eog:
            problems.append(
                f"HF stops generation at {not_eog} ({', '.join(v.piece(t) for t in not_eog)}), "
                "which llama.cpp does not treat as end of generation: output would not end"
            )
        hf_template = tok.chat_template
        gguf_template = meta.get("tokenizer.chat_template")
        if hf_template and not gguf_template:
            problems.append("the chat template was dropped (tokenizer.chat_template missing)")
        elif hf_template and gguf_template != hf_template:
            problems.append("the chat template differs from the HF tokenizer's")
        if problems:
            raise PipelineError(
                f"{shown}: tokenizer differs from {model_dir}: {problems[0]}"
                + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
            )
        all_texts = {"probe": PRETOKENIZER_PROBE, **(texts or {})}
        chat = render_chat(tok)
        compared = {}
        for name, text in [*all_texts.items(), *([("chat", chat)] if chat else [])]:
            special = name == "chat"  # a rendered prompt carries special tokens as text; user text does not
            hf_ids = tok(text, add_special_tokens=False, split_special_tokens=not special).input_ids
            gguf_ids = v.tokenize(text, special=special)
            i = _first_difference(gguf_ids, hf_ids)
            if i is not None:
                got = f"{gguf_ids[i]} {v.piece(gguf_ids[i])!r}" if i < len(gguf_ids) else "end of text"
                want = f"{hf_ids[i]} {tok.convert_ids_to_tokens(hf_ids[i])!r}" if i < len(hf_ids) else "end of text"
                raise PipelineError(
                    f"{shown}: llama.cpp tokenizes text {name!r} differently from the HF tokenizer at token {i}: "
                    f"llama.cpp {got}, HF {want} (tokenizer.ggml.pre = {record['pre']})"
                )
            compared[name] = len(hf_ids)
        record["texts_compared"] = compared
        return record
    finally:
        v.close()


def check_chat_rendering(model_dir, gguf, llama_cpp_dir=None, threads: int = 1, shown_as=None, server=None) -> dict:
    """The check conversation as llama-server serves it (rendered from the GGUF's own template by llama.cpp's
    jinja engine, then tokenized as the server does, BOS included where the model adds one) must be the token
    sequence HF's template gives, token for token. (The server drops a BOS the template writes as text, since
    the tokenizer adds it: the texts may differ by that, the tokens may not.) ``server``: one already started on
    ``gguf`` (:func:`chat_server`, loading while other checks ran), else one is started here."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    hf = render_chat(tok)
    if hf is None:
        return {"chat_template": None}
    hf_ids = tok(hf, add_special_tokens=False).input_ids
    with contextlib.ExitStack() as stack:
        if server is None:
            server = stack.enter_context(chat_server(gguf, llama_cpp_dir, threads))
        server.ready()
        served = server.apply_template(CHAT, CHAT_KWARGS)
        served_ids = server.request("/tokenize", {"content": served, "add_special": True, "parse_special": True})[
            "tokens"
        ]
    i = _first_difference(served_ids, hf_ids)
    if i is not None:
        raise PipelineError(
            f"{shown_as or gguf}: the chat llama-server serves differs from the HF template's at token {i} "
            f"(served {served_ids[i] if i < len(served_ids) else 'end'}, HF {hf_ids[i] if i < len(hf_ids) else 'end'}; "
            f"prompt text {served[:60]!r}...)"
        )
    return {"chat_template": "served as HF renders it", "chat_tokens": len(hf_ids), "chat_text_identical": served == hf}


def chat_server(gguf, llama_cpp_dir=None, threads: int = 1):
    """llama-server on ``gguf`` for :func:`check_chat_rendering`, started without waiting: it maps the file while
    the caller runs its other checks (stopped by its PID on exit)."""
    from ..llamacpp.server import llama_server

    return llama_server(
        gguf, n_ctx=512, threads=threads, llama_cpp_dir=llama_cpp_dir, extra=["--no-warmup"], wait=False
    )
