"""loraforge.conversion.tokenizer_check: the GGUF's own tokenizer and chat template against the HF tokenizer.

Each broken case is a GGUF converted from a model whose tokenizer files disagree with the HF tokenizer the
model is checked against, as happens when tokenizer files are edited, lost or rebuilt on the way."""

from __future__ import annotations

import json
import shutil

import pytest

from bench.families import FAMILIES, build_model
from loraforge import convert
from loraforge.conversion.tokenizer_check import check_chat_rendering, check_tokenizer
from loraforge.errors import PipelineError


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama3")
    model = build_model(FAMILIES["llama3"], root / "m")
    convert(model, root / "m.gguf", outtype="f32")
    return model, root / "m.gguf"


def variant(model, tmp_path, edit) -> tuple:
    """A copy of ``model`` with its tokenizer files edited, and its GGUF."""
    copy = shutil.copytree(model, tmp_path / "variant")
    edit(copy)
    convert(copy, tmp_path / "variant.gguf", outtype="f32")
    return copy, tmp_path / "variant.gguf"


def test_a_good_conversion_records_what_it_checked(llama3):
    model, gguf = llama3
    rec = check_tokenizer(model, gguf, {"t": "Hello world, 'tis 12345 tokens."})
    assert rec["model"] == "gpt2" and rec["pre"] == "llama-bpe" and rec["add_bos"] is True
    assert rec["special_ids"] == {"bos": 128000, "eos": 128009, "eot": 128009, "pad": None}
    assert rec["stop_ids"] == [128001, 128009] and rec["chat_template_kept"] is True
    assert set(rec["texts_compared"]) == {"probe", "t", "chat"}
    chat = check_chat_rendering(model, gguf)
    assert chat["chat_template"] == "served as HF renders it" and chat["chat_tokens"] > 30


def test_a_dropped_chat_template_is_one_line(llama3, tmp_path):
    model, _gguf = llama3
    _copy, gguf = variant(model, tmp_path, lambda d: (d / "chat_template.jinja").unlink())
    with pytest.raises(PipelineError, match=r"variant.gguf: tokenizer differs from .*: the chat template was dropped"):
        check_tokenizer(model, gguf)


def test_a_tokenizer_llama_cpp_tokenizes_differently_is_one_line_naming_text_and_token(llama3, tmp_path):
    """Llama 3's tokenizer.json without ignore_merges: llama.cpp's converter still recognises Llama 3's
    pre-tokenizer (its probe text never needs the setting) and llama.cpp keeps "Việt" whole, as Llama 3 does,
    while this HF tokenizer splits it. The check names the text, the token and both ids."""
    model, _gguf = llama3

    def no_ignore_merges(d):
        tj = json.loads((d / "tokenizer.json").read_text())
        tj["model"]["ignore_merges"] = False
        (d / "tokenizer.json").write_text(json.dumps(tj))

    copy, gguf = variant(model, tmp_path, no_ignore_merges)
    with pytest.raises(
        PipelineError,
        match=r"llama.cpp tokenizes text 't' differently from the HF tokenizer at "
        r"token 2: llama.cpp 101798 .*, HF 11655 .* \(tokenizer.ggml.pre = llama-bpe\)",
    ):
        check_tokenizer(copy, gguf, {"t": "Cửa Việt"})


def test_an_end_of_turn_token_llama_cpp_would_not_stop_at(tmp_path):
    model = build_model(FAMILIES["qwen2"], tmp_path / "qwen")
    gen = json.loads((model / "generation_config.json").read_text())
    gen["eos_token_id"] = [151645, 151643, 151644]  # <|im_start|> too: llama.cpp rightly does not stop there
    (model / "generation_config.json").write_text(json.dumps(gen))
    convert(model, tmp_path / "q.gguf", outtype="f32")
    with pytest.raises(
        PipelineError,
        match=r"HF stops generation at \[151644\] \(<\|im_start\|>\), which llama.cpp "
        r"does not treat as end of generation",
    ):
        check_tokenizer(model, tmp_path / "q.gguf")
