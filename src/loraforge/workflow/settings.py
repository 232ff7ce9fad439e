"""The settings recorded with what the workflow builds: a GGUF's naming metadata, what defines a registry
version's model, and each registered artifact's own build settings. A part of ``Plan`` (its mixin)."""

from __future__ import annotations

from pathlib import Path

from ..forms import VLLM_LORA


class Settings:
    """Settings of names and artifacts (``Plan`` provides the config and the names)."""

    def gguf_metadata(self, name: str) -> dict:
        """llama.cpp's naming keys for a GGUF of ``name`` (an adapter, a compressed model, or ``base``)."""
        basename = self.config["name"] or Path(self.base).resolve().name
        meta = {"general.basename": basename, "general.name": basename}
        if name != "base":
            meta.update({"general.finetune": name, "general.name": f"{basename} {name}"})
        if self.config["deploy"]["quantized_by"]:
            meta["general.quantized_by"] = self.config["deploy"]["quantized_by"]
        return meta

    def lineage_settings(self, name: str) -> dict:
        """The settings that define the model of a version, with the inputs' contents (registry.schema.
        identity_settings): the merge's semantics, and a compressed model's spec. What only chooses or tunes its
        artifacts is each artifact's (:meth:`artifact_settings`): adding a form to the config adds artifacts to
        the version, it does not make another."""
        settings: dict = {"merge": {"method": self.config["merge"]["method"]}}
        if name in self.compressed:
            settings["compress"] = self.compress_spec(name)
        return settings

    def artifact_settings(self, name: str, variant: str) -> dict:
        """The build settings of one registered artifact of ``name`` (a GGUF type, the LoRA GGUF, a checkpoint
        scheme, vLLM's multi-LoRA form, or ``merged``): rebuilt with others, it replaces its predecessor in the
        version, which keeps the old one in its history. GGUF naming metadata is part of a GGUF's bytes."""
        cfg = self.config
        naming = {"name": cfg["name"], "quantized_by": cfg["deploy"]["quantized_by"]}
        if variant == "merged":
            return {"merge": {"shard_size_mb": cfg["merge"]["shard_size_mb"]}}
        if variant == self.lora_variant:
            return {"lora": {"outtype": cfg["lora"]["outtype"]}, "convert": naming}
        if variant in self.hfq_schemes or variant.startswith(VLLM_LORA):
            return {"hf_quant": {k: self.hfq[k] for k in ("text", "samples", "seq_len", "group_size")}}
        settings: dict = {"convert": {"outtype": cfg["convert"]["outtype"], **naming}}
        if variant.endswith("-imat"):
            settings["imatrix"] = {
                "text": self.imatrix["text"],
                "n_ctx": self.imatrix["n_ctx"],
                "chunks": self.imatrix["chunks"],
            }
        return settings
