"""The artifact forms of an adapter revision, each one object: how its artifacts are named, how it is scored
(:class:`Kind`, recorded in every metrics file), what the registry stores it as, its label in the report, what
each further adapter costs in it, what its evaluation reads and how much memory that takes.

The workflow's ``Plan`` finds an artifact's form with :func:`form_of` and asks it; evaluation, the report and the
registry ask :func:`form` by kind. Adding a form is one class here, its rule and its builder: docs/development.md
("Adding a form") shows the steps on the LoRA GGUF form. Nothing here imports torch, llama.cpp or Snakemake.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Any, ClassVar

from .errors import PipelineError

VLLM_LORA = "vllm-lora-"  # vllm-lora-<scheme>: the base's checkpoint of a scheme with the adapter through PEFT
LORA = "lora-"  # lora-<type>: the base's GGUF of a type with the adapter's LoRA GGUF


class Kind(str, Enum):
    """How an artifact is scored. The values are what metrics files and the evaluate rule's ``kind`` hold (a
    changed value would rerun every evaluation of every build)."""

    GGUF = "gguf"  # a GGUF file through llama.cpp
    LORA = "lora"  # the base's GGUF with the adapter's LoRA GGUF applied by llama.cpp
    HF = "hf"  # an HF model directory through transformers, in its own dtype
    PEFT = "peft"  # the base with the adapter applied through PEFT, unmerged
    CHECKPOINT = "hfq"  # a compressed-tensors (GPTQ / AWQ / W8A8) checkpoint
    CHECKPOINT_LORA = "hfq-lora"  # the base's checkpoint with the adapter through PEFT (vLLM's multi-LoRA form)


class Form:
    """One artifact form. A subclass sets what the form is (the class attributes) and says which artifact names are
    its own and what its evaluation reads; ``plan`` is the workflow's ``Plan`` (its paths)."""

    kind: ClassVar[Kind]
    label: ClassVar[str]  # the report's "form" column
    registry_kind: ClassVar[str | None]  # what the registry stores its file as; None: not registered on its own
    per_adapter: ClassVar[str] = "whole"  # "whole": each further adapter costs a whole model; "adapter": its file
    streams: ClassVar[bool] = False  # torch: layer by layer within memory.budget_mb when the model is larger
    takes_adapters: ClassVar[bool] = False  # its evaluation applies the adapter directories through PEFT
    llama_cpp: ClassVar[bool] = False  # scored through llama.cpp, tokenizing the text itself
    vllm_served: ClassVar[bool] = False  # what vLLM serves: with hf_quant.vllm also scored through vLLM itself
    # how it answers the generation checks' chat prompts (evaluation.prompts): "llama-server" (the GGUF's own
    # template), "transformers" (the tokenizer's) or "vllm" (vLLM's chat API, the checkpoint's tokenizer's)
    answers_through: ClassVar[str | None] = None

    def owns(self, artifact: str, schemes: Iterable[str]) -> bool:
        raise NotImplementedError

    def evaluation_inputs(self, plan: Any, model: str, artifact: str) -> dict:
        """What its evaluation scores, besides the reference: files the evaluate rule waits for."""
        raise NotImplementedError

    def build_steps(self, plan: Any, name: str, artifact: str) -> list[str]:
        """The benchmark files of the jobs that build this artifact of ``name`` (the report's build time)."""
        raise NotImplementedError

    def served_by_vllm(self, plan: Any, model: str, artifact: str) -> bool:
        """Whether vLLM serves this artifact of ``model``: with ``hf_quant.vllm`` its evaluation also scores it
        through vLLM itself, cross-checked with this form's own scorer (the stand-in)."""
        return self.vllm_served

    def evaluation_mem_mb(self, plan: Any, inputs_mb: float, vllm: bool = False) -> int:
        """The evaluation's memory: the scorer's runtime plus a multiple of what it reads; with ``vllm``, also
        vLLM's process, its copy of the weights and its 1 GiB KV cache (it runs after the stand-in has freed its
        model, so the larger of the two)."""
        estimate = 2000 + 3 * inputs_mb
        mem = plan.bounded_mem_mb(estimate) if self.streams else int(estimate)
        return max(mem, int(2500 + 3 * inputs_mb)) if vllm else mem

    def per_adapter_bytes(self, size_bytes: int, lora_bytes: int | None) -> int:
        """What one more adapter costs in this form: a whole model, or its adapter file beside a shared base."""
        return lora_bytes if self.per_adapter == "adapter" and lora_bytes is not None else size_bytes


class PeftAdapter(Form):
    kind, label, registry_kind = Kind.PEFT, "PEFT", None
    streams = takes_adapters = True
    answers_through = "transformers"

    def owns(self, artifact, schemes):
        return artifact == "adapter"

    def evaluation_inputs(self, plan, model, artifact):
        return plan.adapter_inputs(model)

    def build_steps(self, plan, name, artifact):
        return []  # the adapter as trained


class HFModel(Form):
    """The merged model, or a compressed (pruned, distilled) one: an HF model directory."""

    kind, label, registry_kind = Kind.HF, "merged HF", "merged"
    streams = True
    answers_through = "transformers"
    STAGES = ("merged", "pruned", "distilled")

    def owns(self, artifact, schemes):
        return artifact in self.STAGES

    def evaluation_inputs(self, plan, model, artifact):
        inputs = {"artifact": plan.stage_dir(model, artifact)}
        if artifact == "merged" and plan.merged_scored_in_conversion and model in plan.adapters:
            # scored beside llama.cpp's converter: the numbers are in the float GGUF's sidecar
            inputs["scored"] = plan.gguf_check(model, plan.float_type)
        return inputs

    def build_steps(self, plan, name, artifact):
        steps = plan.model_steps(name)
        return steps if artifact == "distilled" else steps[:1]

    def served_by_vllm(self, plan, model, artifact):
        # the merged model of an adapter whose checkpoints go to vLLM (hf_quant.models) is what vLLM serves in its
        # own 16-bit dtype: scored so too, beside the stand-in (transformers in the same dtype)
        return artifact == "merged" and model in plan.hfq_adapters

    def label_of(self, artifact: str) -> str:
        return self.label if artifact == "merged" else f"{artifact} HF"


class GGUF(Form):
    """A merged (or compressed) model's GGUF: the float one from llama.cpp's converter, a quantized one, one
    quantized with an importance matrix (``<type>-imat``)."""

    kind, label, registry_kind = Kind.GGUF, "merged GGUF", "gguf"
    llama_cpp = True
    answers_through = "llama-server"

    def owns(self, artifact, schemes):
        return not artifact.startswith((LORA, VLLM_LORA)) and artifact not in (*HFModel.STAGES, "adapter", *schemes)

    def evaluation_inputs(self, plan, model, artifact):
        return {"artifact": plan.gguf(model, artifact), "check": plan.gguf_check(model, artifact)}

    def build_steps(self, plan, name, artifact):
        steps = [*plan.model_steps(name), plan.benchmark("convert_to_gguf", f"{name}-{plan.float_type}")]
        if artifact != plan.float_type:
            steps.append(plan.benchmark("quantize_gguf", f"{name}-{artifact}"))
        if artifact.endswith("-imat"):
            steps.append(plan.benchmark("compute_imatrix", name))
        return steps


class LoraGGUF(Form):
    """``lora-<type>``: the base's GGUF of that type with the adapter's LoRA GGUF (one per adapter, shared bases)."""

    kind, label, registry_kind = Kind.LORA, "base GGUF + LoRA GGUF", "gguf"
    per_adapter = "adapter"
    llama_cpp = True
    answers_through = "llama-server"

    def owns(self, artifact, schemes):
        return artifact.startswith(LORA)

    def evaluation_inputs(self, plan, model, artifact):
        t = artifact.removeprefix(LORA)
        lora = plan.lora_gguf_of(model)
        return {
            "artifact": plan.gguf("base", t),
            "check": plan.gguf_check("base", t),
            "lora": lora,
            "lora_check": f"{lora}.json",
        }

    def build_steps(self, plan, name, artifact):
        return [plan.benchmark("convert_lora", name)]  # the base's GGUFs are built once for every adapter


class Checkpoint(Form):
    """A GPTQ / AWQ / W8A8 compressed-tensors checkpoint of a merged model (variant: the scheme), for vLLM."""

    kind, label, registry_kind = Kind.CHECKPOINT, "merged, compressed-tensors (vLLM)", "hf-quant"
    vllm_served = True
    answers_through = "vllm"

    def owns(self, artifact, schemes):
        return artifact in schemes

    def evaluation_inputs(self, plan, model, artifact):
        return {"artifact": plan.hfq_dir(model, artifact), "check": plan.hfq_check(model, artifact)}

    def build_steps(self, plan, name, artifact):
        return [*plan.model_steps(name), plan.benchmark("quantize_hf", f"{name}-{artifact}")]

    def evaluation_mem_mb(self, plan, inputs_mb, vllm=False):
        # decompressed to 16-bit weights, loaded whole; then vLLM's process, its weights and its 1 GiB KV cache
        return int(2000 + 8 * inputs_mb + (2500 + 3 * inputs_mb if vllm else 0))


class CheckpointLora(Checkpoint):
    """``vllm-lora-<scheme>``: the base's checkpoint with the adapter's PEFT directory, as vLLM's multi-LoRA
    serves it (the adapter registered; the base checkpoint recorded with it)."""

    kind, label, registry_kind = Kind.CHECKPOINT_LORA, "base compressed-tensors + PEFT LoRA (vLLM)", "vllm-lora"
    per_adapter = "adapter"
    takes_adapters = True

    def owns(self, artifact, schemes):
        return artifact.startswith(VLLM_LORA)

    def evaluation_inputs(self, plan, model, artifact):
        scheme = artifact.removeprefix(VLLM_LORA)
        inputs = {"artifact": plan.hfq_dir("base", scheme), "check": plan.hfq_check("base", scheme)}
        return {**inputs, **plan.adapter_inputs(model)}

    def build_steps(self, plan, name, artifact):
        return []  # the adapter as trained; the base's checkpoint is built once for every adapter


# matched in this order: the prefixed forms before GGUF, which takes every other name (a llama.cpp type)
FORMS: tuple[Form, ...] = (PeftAdapter(), HFModel(), CheckpointLora(), LoraGGUF(), Checkpoint(), GGUF())
BY_KIND: dict[Kind, Form] = {f.kind: f for f in FORMS}
assert len(BY_KIND) == len(FORMS), "one form per kind"


def form_of(artifact: str, schemes: Iterable[str]) -> Form:
    """The form of an evaluated artifact's name (``schemes``: the compressed-tensors scheme names)."""
    schemes = tuple(schemes)
    return next(f for f in FORMS if f.owns(artifact, schemes))


def form(kind: str | Kind) -> Form:
    """The form scored as ``kind`` (a metrics file's ``kind``)."""
    try:
        return BY_KIND[Kind(kind)]
    except ValueError:
        raise PipelineError(f"unknown artifact kind {kind!r} (one of {', '.join(k.value for k in Kind)})") from None
