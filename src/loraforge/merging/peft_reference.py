"""PEFT itself, the reference the merge is checked against: the adapters applied through PEFT (unmerged or
merged with ``merge_and_unload``). Loads the whole model with torch; used by the merge check, the evaluation of
the adapter-applied model and ``merge.method: peft``."""

from __future__ import annotations

from pathlib import Path

from ..preflight import Adapter, AdapterSpec


def load_hf_model(model_dir: str | Path, dtype="auto"):
    """An HF causal LM from a local directory (never a hub id: local_files_only)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)


def peft_model(base_dir: Path, loaded: list[tuple[AdapterSpec, Adapter]], merge_all: bool):
    """Base with the adapters applied in order through PEFT. The last one stays unmerged unless merge_all."""
    from peft import PeftModel

    model = load_hf_model(base_dir)
    for i, (spec, ad) in enumerate(loaded):
        emb = next((k for n, k in ad.replaced.items() if n.endswith("embed_tokens.weight")), None)
        if emb is not None and ad.tensors[emb].shape[0] != model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(ad.tensors[emb].shape[0])
        model = PeftModel.from_pretrained(model, str(ad.path), local_files_only=True)
        if spec.weight != 1.0:
            from peft.tuners.lora import LoraLayer

            for m in model.modules():
                if isinstance(m, LoraLayer):
                    m.scale_layer(spec.weight)
        if merge_all or i < len(loaded) - 1:
            model = model.merge_and_unload()
    model.eval()
    return model


def peft_merge(base_dir: Path, loaded: list[tuple[AdapterSpec, Adapter]], out: Path, shard_bytes: int) -> dict:
    """``merge.method: peft``: merge_and_unload on the whole model, saved with save_pretrained."""
    model = peft_model(base_dir, loaded, merge_all=True)
    model.save_pretrained(str(out), max_shard_size=shard_bytes)
    return {"tensors_total": len(model.state_dict())}
