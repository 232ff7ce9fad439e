"""Real tokenizers and chat templates across architectures, through the whole workflow.

Each family is a tiny model of its architecture with a real vocabulary and template from the pinned llama.cpp
tree (bench.families) and a LoRA adapter. The workflow's conversion check compares the GGUF's own
tokenizer with the HF one; here, on every GGUF it produced, llama.cpp must also reproduce llama.cpp's test
vectors (the ids of the original HF tokenizer) wherever the HF tokenizer does."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import make_adapter

from bench.families import FAMILIES, LORA_TARGETS, build_model, build_tokenizer, vectors

# Families whose tokenizer is the vocabulary's own; gemma2's stands in without the dummy-prefix space (Gemma's
# rule, which the gemma2 converter writes), so the vectors of Llama 2's vocabulary do not apply to it.
WITH_VECTORS = [f for f in FAMILIES if f != "gemma2"]


@pytest.mark.parametrize("name", WITH_VECTORS)
def test_hf_tokenizer_reproduces_the_original_ids(name, tmp_path):
    tok = build_tokenizer(FAMILIES[name], tmp_path / "tok")
    vs = vectors(FAMILIES[name].vocab)
    assert len(vs) >= 40
    differing = [i for i, (text, ids) in enumerate(vs) if tok(text, add_special_tokens=False).input_ids != ids]
    assert differing == []


def llama_cpp_ids(gguf, texts: list[str]) -> list[list[int]]:
    """The ids llama.cpp gives each text from the GGUF's own vocabulary (loaded once)."""
    from loraforge.conversion.tokenizer_check import GGUFVocab

    v = GGUFVocab(gguf)
    try:
        return [v.tokenize(text, special=False) for text in texts]
    finally:
        v.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_through_the_workflow(name, workflow, tmp_path):
    fam = FAMILIES[name]
    base = build_model(fam, tmp_path / "base")
    adapter = make_adapter(
        base, tmp_path / "adapter", r=8, std=0.02, targets=LORA_TARGETS[fam.arch], fan_in_fan_out=fam.arch == "gpt2"
    )
    text = tmp_path / "text.txt"
    text.write_text("\n".join(t for t, _ids in vectors("llama-bpe")) * 20)
    wf = workflow(
        {
            "base_model": str(base),
            # named as a real model is (llama.cpp strips the whitespace after Phi-3's chat markers only in a GGUF
            # whose general.name says phi3, as the real tokenizer does: a Phi-3 named otherwise fails the check)
            "name": f"tiny-{name}",
            "adapters": {name: str(adapter)},
            # a quantized GGUF carries its float GGUF's vocabulary and template unchanged: none is built here
            "quantize": {"types": [], "threads": 1},
            "threads": 1,
            "convert": {"outtype": "f32"},
            # tokenizers are what this test is about: the GGUFs' evaluations (llama.cpp's tokens against the HF
            # tokenizer's), not the torch forms'; the registry and bundles are tested elsewhere
            "evaluation": {
                "texts": {"vectors": str(text)},
                "n_ctx": 64,
                "max_tokens": 512,
                "skip": ["adapter", "merged", "base"],
            },
            "registry": {"enabled": False},
            "deploy": {"enabled": False},
        }
    )
    wf.run()
    res = wf.root / "results"
    side = json.loads((res / "gguf" / name / f"{name}-F32.gguf.json").read_text())
    tok = side["tokenizer"]
    assert tok["texts_compared"]["probe"] > 100 and tok["chat_template_kept"] == (fam.template is not None)
    if fam.template:
        assert tok["chat_template"] == "served as HF renders it" and tok["texts_compared"]["chat"] > 10
    if name == "llama3":  # the rebuilt Llama 3 tokenizer is recognised as Llama 3's, not Smaug's
        assert tok["pre"] == "llama-bpe" and tok["special_ids"]["eos"] == 128009
    # GPT-2's fan_in_fan_out adapter has no LoRA GGUF form (docs/pipeline.md): its merged GGUF only
    for t in ("F32",) if name == "gpt2" else ("F32", "lora-F32"):
        ev = json.loads((res / "eval" / name / f"{t}.json").read_text())
        assert ev["texts"]["vectors"]["llama_cpp_tokens_agree"] is True
    if name in WITH_VECTORS:
        texts, want = zip(*vectors(fam.vocab), strict=True)
        for gguf in (res / "gguf" / name).glob("*.gguf"):
            got = llama_cpp_ids(gguf, list(texts))
            differing = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
            assert differing == [], (gguf.name, differing)


def test_a_built_tokenizer_is_kept_for_every_later_process_and_a_racing_build_yields_to_the_first(
    tmp_path, monkeypatch
):
    """Llama 3's tokenizer takes half a minute to build from llama.cpp's vocabulary: it is built once per machine
    into loraforge's cache (each pytest worker and benchmark used to build its own). A process that finds it there
    builds nothing; two that build at once both end with the first one's whole directory and leave no partial one."""
    import bench.families as families

    monkeypatch.setattr(families, "cache_root", lambda: tmp_path / "cache")  # llama.cpp stays where it is
    monkeypatch.setattr(families, "_BUILT", {})
    fam = FAMILIES["mistral"]
    families.build_tokenizer(fam, tmp_path / "first")
    kept = families.tokenizer_cache(fam)
    assert sorted(p.name for p in kept.iterdir()) == sorted(p.name for p in (tmp_path / "first").iterdir())

    def never(family, out):
        raise AssertionError("built again")

    monkeypatch.setattr(families, "_BUILT", {})  # a new process
    monkeypatch.setattr(families, "_save_tokenizer", never)
    families.build_tokenizer(fam, tmp_path / "second")
    for p in kept.iterdir():
        assert (tmp_path / "second" / p.name).read_bytes() == p.read_bytes()

    other = FAMILIES["gpt2"]
    first = families.tokenizer_cache(other)

    def racing(family, out):  # another worker's whole build lands while this one writes its own
        (out / "mine.txt").write_text("this process's")
        shutil.copytree(kept, first)

    monkeypatch.setattr(families, "_save_tokenizer", racing)
    families.build_tokenizer(other, tmp_path / "third")
    assert sorted(p.name for p in first.parent.iterdir()) == sorted([kept.name, first.name])  # no partial dir left
    assert sorted(p.name for p in (tmp_path / "third").iterdir()) == sorted(p.name for p in kept.iterdir())
