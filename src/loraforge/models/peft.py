"""Models in torch: an HF causal LM from a local directory, and a base with PEFT adapters applied (unmerged, or
merged with ``merge_and_unload``), whole or streamed layer by layer within a memory budget (``.streamed``).
Used by the merge check, the evaluation of the adapter-applied model, compression and ``merge.method: peft``."""

from __future__ import annotations

from pathlib import Path

from ..device import torch_device
from ..errors import PipelineError
from ..preflight import Adapter, AdapterSpec, is_embedding
from .hf import load_hf_model
from .streamed import plan_for, streamed_model


def peft_model(
    base_dir: Path,
    loaded: list[tuple[AdapterSpec, Adapter]],
    merge_all: bool,
    dtype="auto",
    budget_mb: float | None = None,
    n_ctx: int = 256,
):
    """Base with the adapters applied in order through PEFT. The last one stays unmerged unless merge_all.

    ``dtype``: "auto" (the base's) or "float32". With ``budget_mb`` a base too large for it streams layer by layer
    (loraforge.models.streamed) and every adapter is applied unmerged (PEFT cannot merge into weights on disk);
    the model then carries its memory plan as ``model.memory_plan``."""
    from peft import PeftModel

    if merge_all and budget_mb is not None:
        raise PipelineError("a PEFT merge (merge.method: peft) loads the whole model: it takes no memory budget")
    plan = plan_for(base_dir, dtype, budget_mb, n_ctx)
    streamed = plan["streamed"]
    model = streamed_model(base_dir, dtype, plan["read_ahead"]) if streamed else load_hf_model(base_dir)
    for i, (spec, ad) in enumerate(loaded):
        emb = next((k for n, k in ad.replaced.items() if is_embedding(n)), None)
        if emb is not None and ad.tensors[emb].shape[0] != model.get_input_embeddings().weight.shape[0]:
            if streamed:
                raise PipelineError(
                    f"{ad.path}: resizes the embeddings; applying it through PEFT to a base streamed from disk is "
                    f"not supported: raise memory.budget_mb to load {base_dir} whole"
                )
            model.resize_token_embeddings(ad.tensors[emb].shape[0])
        if streamed and i > 0 and any(m.magnitude_key for m in ad.lora.values()):
            raise PipelineError(
                f"{ad.path}: a DoRA adapter after another in a stack is normalised against the merged weights, "
                f"which a base streamed from disk does not have: raise memory.budget_mb to load {base_dir} whole"
            )
        name = f"lf{i}"
        if isinstance(model, PeftModel):  # streamed: every adapter stays unmerged, applied together
            model.load_adapter(str(ad.path), adapter_name=name, local_files_only=True, low_cpu_mem_usage=True)
        else:
            model = PeftModel.from_pretrained(
                model, str(ad.path), adapter_name=name, local_files_only=True, low_cpu_mem_usage=streamed
            )
        if streamed:
            _assign_adapter_weights(model, ad.path, name)
        if spec.weight != 1.0:
            for m in model.modules():
                if isinstance(getattr(m, "scaling", None), dict) and name in m.scaling:
                    m.scaling[name] *= spec.weight
        if not streamed and (merge_all or i < len(loaded) - 1):
            model = model.merge_and_unload()
    if streamed:
        model.base_model.set_adapter([f"lf{i}" for i in range(len(loaded))])
        compute, device = model.streamed.dtype, model.streamed.device
        for prm in model.parameters():
            if not prm.is_meta:
                prm.data = prm.data.to(device, compute)  # the adapters' tensors in the compute dtype too
    else:
        model = (model.float() if dtype == "float32" else model).to(torch_device())
    model.eval()
    model.memory_plan = plan
    return model


def _assign_adapter_weights(model, path, name: str) -> None:
    """Give a PEFT adapter on a meta-device base its tensors. PEFT's ``low_cpu_mem_usage`` loading moves them to
    the device of the base layer they wrap, which for a streamed base is meta, so they are assigned here, after."""
    from peft.utils import load_peft_weights

    stored = load_peft_weights(str(path), device="cpu")
    wanted = {}
    for n, p in model.named_parameters():
        if p.is_meta and f".{name}" in n:  # the adapter's own tensors; the base's stay meta (they stream)
            plain = n.replace(f".{name}", "")  # as PEFT saves it: lora_A.weight, lora_magnitude_vector, lm_head.weight
            for key in (plain, plain.removesuffix(".weight"), n.replace(f".modules_to_save.{name}", "")):
                wanted[key] = wanted[key.removeprefix("base_model.model.")] = n
    model.load_state_dict({wanted[k]: v for k, v in stored.items() if k in wanted}, strict=False, assign=True)
    left = [n for n, p in model.named_parameters() if p.is_meta and f".{name}" in n]
    if left:
        raise PipelineError(f"{path}: no stored tensor for {left[0]} of the adapter")
    model.requires_grad_(False)
