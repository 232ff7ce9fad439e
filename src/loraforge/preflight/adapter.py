"""PEFT LoRA/DoRA adapter directories, read from adapter_config.json and safetensors headers only."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PipelineError
from ..io.safetensors import TensorInfo, read_header
from .base import BaseModel, is_embedding
from .files import read_json

ADAPTER_PREFIX = "base_model.model."


@dataclass
class LoraModule:
    """The LoRA factors an adapter holds for one base weight."""

    module: str  # e.g. model.layers.0.self_attn.q_proj
    a_key: str
    b_key: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    embedding: bool = False
    magnitude_key: str | None = None


@dataclass
class Adapter:
    path: Path
    config: dict
    weights_file: Path
    tensors: dict[str, TensorInfo]
    lora: dict[str, LoraModule] = field(default_factory=dict)
    replaced: dict[str, str] = field(default_factory=dict)  # base tensor name -> adapter key

    @property
    def has_tokenizer(self) -> bool:
        return (self.path / "tokenizer_config.json").exists() or (self.path / "tokenizer.json").exists()


_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?:(?P<ab>lora_[AB])\.weight|(?P<eab>lora_embedding_[AB])|(?P<mag>lora_magnitude_vector))$"
)


def inspect_adapter(path: str | Path) -> Adapter:
    """Read an adapter's config and tensor names; refuse what the merge cannot reproduce exactly."""
    p = Path(path)
    if not p.exists():
        raise PipelineError(f"{p}: adapter directory does not exist")
    if not p.is_dir():
        raise PipelineError(f"{p}: adapter is a file, expected a PEFT adapter directory")
    cfg_path = p / "adapter_config.json"
    if not cfg_path.exists():
        raise PipelineError(f"{cfg_path}: missing (not a PEFT adapter directory)")
    cfg = read_json(cfg_path)
    ptype = cfg.get("peft_type")
    if ptype != "LORA":
        raise PipelineError(f"{cfg_path}: peft_type {ptype!r} is not supported (only LORA, incl. DoRA/rsLoRA)")
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), int | float) or cfg[key] <= 0:
            raise PipelineError(f"{cfg_path}: {key} must be a positive number, got {cfg.get(key)!r}")
    for key, what in (
        ("trainable_token_indices", "trainable token indices"),
        ("layer_replication", "layer replication"),
        ("target_parameters", "LoRA on parameters (target_parameters)"),
    ):
        if cfg.get(key):
            raise PipelineError(f"{cfg_path}: {what} is not supported by the merge")
    if cfg.get("lora_bias") or cfg.get("bias", "none") != "none":
        raise PipelineError(f"{cfg_path}: adapters with trained biases (bias/lora_bias) are not supported")
    weights = p / "adapter_model.safetensors"
    if not weights.exists():
        if (p / "adapter_model.bin").exists():
            raise PipelineError(f"{p / 'adapter_model.bin'}: .bin adapters are not supported; re-save as safetensors")
        raise PipelineError(f"{weights}: missing (adapter has no weights)")
    tensors = read_header(weights)
    if not tensors:
        raise PipelineError(f"{weights}: contains no tensors")
    ad = Adapter(p, cfg, weights, tensors)
    parts: dict[str, dict[str, str]] = {}
    for key in tensors:
        if not key.startswith(ADAPTER_PREFIX):
            raise PipelineError(f"{weights}: unexpected tensor name {key!r} (expected '{ADAPTER_PREFIX}...')")
        m = _LORA_KEY.match(key)
        if m:
            module = m["module"][len(ADAPTER_PREFIX) :]
            kind = m["ab"] or m["eab"] or m["mag"]
            parts.setdefault(module, {})[kind] = key
        else:
            name = key[len(ADAPTER_PREFIX) :]
            if ".original_module." in name:
                continue  # PEFT's copy of the layer that modules_to_save replaces wholesale: never effective
            plain = ".modules_to_save." not in name
            for infix in (".modules_to_save.default.", ".modules_to_save.", ".base_layer."):
                name = name.replace(infix, ".")
            if plain or name not in ad.replaced:  # X.weight and X.modules_to_save.weight are the same copy
                ad.replaced[name] = key
    for module, kinds in parts.items():
        emb = "lora_embedding_A" in kinds or "lora_embedding_B" in kinds
        a = kinds.get("lora_embedding_A" if emb else "lora_A")
        b = kinds.get("lora_embedding_B" if emb else "lora_B")
        if not a or not b:
            raise PipelineError(f"{weights}: module {module} has only one of the LoRA A/B factors")
        mag = kinds.get("lora_magnitude_vector")
        if mag and emb:
            raise PipelineError(f"{weights}: DoRA on embedding layer {module} is not supported by the streaming merge")
        ad.lora[module] = LoraModule(module, a, b, tensors[a].shape, tensors[b].shape, emb, mag)
    if not ad.lora and not ad.replaced:
        raise PipelineError(f"{weights}: no LoRA tensors found")
    _check_config_matches_weights(ad, cfg_path)
    return ad


def _targets(cfg: dict) -> tuple[set[str] | None, str | None]:
    """PEFT's target_modules: a list of name suffixes, a regex (a string), or 'all-linear'."""
    tm = cfg.get("target_modules")
    if tm is None or tm == "all-linear":
        return None, None
    if isinstance(tm, str):
        return None, tm
    return set(tm), None


def _matches(module: str, names: set[str] | None, regex: str | None) -> bool:
    """PEFT's check_target_module_exists: a listed name matches the module or a dotted suffix of it."""
    if regex is not None:
        return re.fullmatch(regex, module) is not None
    if names is None:
        return True
    return any(module == n or module.endswith("." + n) for n in names)


def _check_config_matches_weights(ad: Adapter, cfg_path: Path) -> None:
    """The weights hold LoRA factors only for modules the config targets (PEFT would ignore or refuse others)."""
    names, regex = _targets(ad.config)
    saved = set(ad.config.get("modules_to_save") or [])
    for module in ad.lora:
        if not _matches(module, names, regex):
            raise PipelineError(
                f"{ad.weights_file}: holds LoRA weights for {module}, which target_modules in {cfg_path.name} "
                f"({ad.config.get('target_modules')!r}) does not name: config and weights disagree"
            )
    for name in ad.replaced:
        module = name.rsplit(".", 1)[0]
        if saved and not any(module == s or module.endswith("." + s) for s in saved):
            raise PipelineError(
                f"{ad.weights_file}: replaces {name}, which modules_to_save in {cfg_path.name} does not name"
            )


def check_adapter_against_base(ad: Adapter, base: BaseModel) -> None:
    """Shapes and module names of the adapter must fit the base (after any replaced tensors)."""
    shapes = {k: v.shape for k, v in base.tensors.items()}
    if base.tied_embeddings:
        emb = next((k for k in shapes if is_embedding(k)), None)
        if emb:
            shapes.setdefault("lm_head.weight", shapes[emb])
    for name, key in ad.replaced.items():
        if name not in shapes:
            raise PipelineError(f"{ad.weights_file}: replaces {name}, which the base model does not have")
        shapes[name] = ad.tensors[key].shape
    fifo = bool(ad.config.get("fan_in_fan_out"))
    for module, lm in ad.lora.items():
        wname = f"{module}.weight"
        if wname not in shapes:
            raise PipelineError(f"{ad.weights_file}: targets module {module}, which the base model does not have")
        w = shapes[wname]
        r = lm.a_shape[0]
        if len(w) != 2 or len(lm.a_shape) != 2 or len(lm.b_shape) != 2 or lm.b_shape[1] != r:
            raise PipelineError(
                f"{ad.weights_file}: {module}: LoRA factor shapes {lm.a_shape}, {lm.b_shape} are invalid"
            )
        if lm.embedding:
            expected = (lm.a_shape[1], lm.b_shape[0])  # (num_embeddings, dim)
        else:
            expected = (lm.b_shape[0], lm.a_shape[1])  # (out, in)
            if fifo:
                expected = expected[::-1]
        if tuple(w) != expected:
            raise PipelineError(
                f"{ad.weights_file}: {module}: adapter shape {expected} does not match base weight {tuple(w)}"
            )
        if lm.magnitude_key:
            out_dim = expected[1] if fifo else expected[0]
            if ad.tensors[lm.magnitude_key].shape != (out_dim,):
                raise PipelineError(f"{ad.weights_file}: {module}: DoRA magnitude shape does not match base weight")
    if base.tied_embeddings and ("lm_head.weight" in ad.replaced or "lm_head" in ad.lora):
        raise PipelineError(
            f"{ad.weights_file}: changes lm_head, but the base ties lm_head to embed_tokens; "
            "this would silently change the embeddings too"
        )
    _check_targets_exist(ad, base)


def _check_targets_exist(ad: Adapter, base: BaseModel) -> None:
    """target_modules names at least one module of the base (PEFT refuses to load the adapter otherwise)."""
    names, regex = _targets(ad.config)
    modules = {k[: -len(".weight")] for k in base.tensors if k.endswith(".weight")}
    if names is None and regex is None:
        return
    if not any(_matches(m, names, regex) for m in modules):
        raise PipelineError(
            f"{ad.path / 'adapter_config.json'}: target_modules {ad.config.get('target_modules')!r} "
            "names no module of the base model"
        )


def tokenizer_source(base: BaseModel, adapters: list[Adapter]) -> Path:
    """The tokenizer comes from the last adapter that ships one (added tokens), else from the base."""
    for ad in reversed(adapters):
        if ad.has_tokenizer:
            return ad.path
    return base.path
