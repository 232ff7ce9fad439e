"""What each job reads and the memory it needs: a part of ``Plan`` (its mixin). Paths only; the workflow marks
the external ones."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..forms import LORA, VLLM_LORA
from . import paths


class JobInputs:
    """The inputs and resources of each rule's jobs (``Plan`` provides names and paths)."""

    # --- the inputs of each job (paths; the workflow marks the external ones) ---------------------------------

    def external_paths(self) -> set[str]:
        """Inputs this workflow reads but does not build: only their content (a fingerprint param) triggers reruns."""
        out = {self.base, *(self.texts.values())}
        out |= {s["path"] for a in self.adapters for s in self.adapter_specs(a)}
        if self.imatrix:
            out.add(self.imatrix["text"])
        if self.compress:
            out.add(self.compress["text"])
        if self.hfq:
            out.add(self.hfq["text"])
        return {p for p in out if not self.produced(p)}

    def adapter_inputs(self, adapter: str) -> dict:
        """The base and the adapter stack of one adapter."""
        return {"base": self.base, "adapters": [s["path"] for s in self.adapter_specs(adapter)]}

    def reference_inputs(self, adapter: str) -> dict:
        """What the float32 reference of an adapter is computed from: the base with the adapter applied through
        PEFT, unmerged (the model the adapter defines; the merged model is measured against it like every form)."""
        return self.adapter_inputs(adapter)

    @property
    def reference_in_merge(self) -> bool:
        """Whether an adapter's float32 reference is computed by its merge job, beside the merge (one core each:
        loraforge.merging.merge_artifact), which the merge check then reads (evaluation on, and a merged form with
        its check): one job and one process fewer an adapter.
        Else compute_reference computes it (a LoRA-only revision; a merge without its check)."""
        return bool(self.evaluate and self.merge_check)

    def merge_check_inputs(self, adapter: str) -> dict:
        """What merge_adapter reads besides the base and the adapters: the evaluation texts, where it computes the
        adapter's reference (:attr:`reference_in_merge`)."""
        return {"texts": list(self.texts.values())} if self.reference_in_merge else {}

    def merge_outputs(self) -> dict:
        """merge_adapter's outputs besides the model and its sidecar: with the merge check on, the merged model's
        float32 log-probs on the checked tokens, which the checks of its GGUFs compare with; the adapter's reference,
        where the merge job computes it."""
        out = {"window": paths.MERGE_WINDOW} if self.merge_check else {}
        return {**out, "reference": paths.REFERENCE} if self.reference_in_merge else out

    @property
    def merge_check(self) -> bool:
        return bool(self.merged and self.config["merge"]["check"])

    def lora_check_inputs(self, adapter: str) -> dict:
        """What convert_lora checks the LoRA GGUF against instead of running PEFT itself: the evaluation's reference,
        which is that PEFT float32 model's log-probs already (a LoRA-only revision computes it even with evaluation
        off); nothing where no reference is computed."""
        return {"reference": paths.REFERENCE.format(adapter=adapter)} if self.evaluate or not self.merged else {}

    @property
    def merged_scored_in_conversion(self) -> bool:
        """Whether an adapter's merged model is scored by its float GGUF's conversion job, on the core llama.cpp's
        converter (one Python thread) leaves idle, instead of by its evaluation job, which then reads those numbers
        from the conversion's sidecar (loraforge.conversion.convert_artifact): the merged form evaluated against
        the reference the conversion check reads, and answering no prompts (the generation checks need the model
        loaded in the evaluation job anyway). At 8B the pass read the merged model from disk again in the
        evaluation job, after the quantizations had taken the page cache."""
        return bool(
            self.reference_in_merge
            and self.convert_check
            and self.evaluated_form("merged")
            and "merged" not in self.answering
        )

    def convert_mem_mb(self, model: str, model_mb: float) -> int:
        """llama.cpp's (lazy) converter and the logit check; with the merged model scored beside the converter
        (:attr:`merged_scored_in_conversion`), that pass's memory too."""
        mb = self.bounded_mem_mb(1500 + 3 * model_mb)
        if self.merged_scored_in_conversion and model in self.adapters:
            mb += self.bounded_mem_mb(2000 + 3 * model_mb)
        return mb

    def convert_inputs(self, model: str) -> dict:
        """The HF model a float GGUF is converted from; for an adapter's merged model with evaluation on, also its
        float32 reference, which the conversion check compares the GGUF with instead of running the HF model again."""
        inputs = {"model_dir": self.model_dir(model)}
        if self.convert_check:
            inputs.update(self.check_reference(model))
        return inputs

    def check_reference(self, model: str) -> dict:
        """The stored float32 log-probs the checks of ``model``'s GGUFs compare with instead of running its HF model
        (conversion) or its float GGUF (quantization) again: an adapter's merged model's, which the merge check
        computed; none for the base and compressed models, or with the merge check off. With evaluation on, also
        the adapter's evaluation reference: the checks score its first window for the evaluation, which then scores
        the other windows only."""
        if self.merge_check and model in self.adapters:
            window = {"reference": paths.MERGE_WINDOW.format(adapter=model)}
            return (
                {**window, "evaluation_reference": paths.REFERENCE.format(adapter=model)} if self.evaluate else window
            )
        return {}

    def hfq_inputs(self, model: str) -> dict:
        return {"model_dir": self.model_dir(model), "text": self.hfq["text"]}

    def quantize_inputs(self, model: str, gguf_type: str) -> dict:
        inputs = {"gguf": self.gguf(model, self.float_type), **self.check_reference(model)}
        if gguf_type.endswith("-imat"):
            inputs["imatrix"] = paths.IMATRIX.format(model=model)
        return inputs

    def evaluation_inputs(self, model: str, artifact: str) -> dict:
        """What evaluate_artifact scores: base + adapters (PEFT), an HF model dir, a GGUF, or base GGUF + LoRA GGUF;
        and the reference it is compared with (a compressed model's is its teacher's)."""
        inputs = {"reference": paths.REFERENCE.format(adapter=self.teacher(model))}
        if self.prompts and artifact in self.answering:  # the generation checks: against the adapter's own answers
            inputs["answers"] = paths.ANSWERS.format(adapter=self.teacher(model))
        return {**inputs, **self.form(artifact).evaluation_inputs(self, model, artifact)}

    def lora_evaluated(self) -> list[str]:
        """The ``lora-<type>`` pairs an adapter's LoRA GGUF is evaluated on (every base GGUF type not skipped), in its
        evaluate_adapter_lora job."""
        if not self.lora:
            return []
        return [a for a in (f"{LORA}{t}" for t in self.gguf_types) if self.evaluated_form(a)]

    def gguf_evaluated(self) -> list[str]:
        """The GGUF types of a merged (or compressed) model that are evaluated (its float GGUF and each quantized
        type not skipped): in an adapter's evaluate_adapter(_lora) job, a compressed model's evaluate_ggufs."""
        return [t for t in self.gguf_types if self.merged and self.evaluated_form(t)]

    def torch_evaluated(self) -> list[str]:
        """An adapter's transformers evaluations that are not skipped: the adapter through PEFT, its merged model."""
        return [a for a in ("adapter", *(["merged"] if self.merged else [])) if self.evaluated_form(a)]

    # Some evaluations of a model run in turn, one job per model (they share the reference, and a team's thousand
    # adapters plan and submit one job each instead of one per artifact): every evaluated form of an adapter, its
    # merged GGUFs, then its LoRA GGUF on each base GGUF type, then its transformers forms (the merged model; the
    # adapter through PEFT where not skipped); a compressed model's GGUFs. A rule's outputs are the same for every
    # model it builds, so an adapter whose LoRA form is refused (or off) has a group of its own
    IN_TURN = ("adapter", "adapter_lora", "ggufs")

    def in_turn(self, group: str) -> list[str]:
        """The artifacts one evaluate_<group> job evaluates, in order. An adapter's merged GGUFs come first and its
        merged model last: at 8B the last GGUFs written are still in the page cache, and the merged model is read
        once, at the end."""
        if group == "ggufs":
            return self.gguf_evaluated()
        pairs = self.lora_evaluated() if group == "adapter_lora" else []
        return self.gguf_evaluated() + pairs + self.torch_evaluated()

    def in_turn_all(self) -> list[str]:
        return [a for g in self.IN_TURN for a in self.in_turn(g)]

    def in_turn_models(self, group: str) -> list[str]:
        """The ``{model}`` of evaluate_<group>: the adapters without and with the LoRA GGUF form, the compressed
        models."""
        if group == "ggufs":
            return list(self.compressed)
        return [a for a in self.adapters if self.lora_form(a) == (group == "adapter_lora")]

    def in_turn_inputs(self, model: str, group: str) -> dict:
        """What evaluate_<group> reads (each artifact's :meth:`evaluation_inputs`), each file named once: ``<key>``
        where every artifact reads it (the reference), ``<key>_<n>[_<m>...]`` where the n-th (m-th, ...) does (an
        artifact; the LoRA GGUF, which each pair reads). Each name is a dependency Snakemake resolves and prints at
        every invocation: a thousand adapters' plan is as slow as their names are many."""
        each = [self.evaluation_inputs(model, a) for a in self.in_turn(group)]
        readers: dict[tuple[str, str], tuple[object, list[int]]] = {}  # (key, file) -> (file, the artifacts)
        for n, inputs in enumerate(each):
            for key, value in inputs.items():
                readers.setdefault((key, repr(value)), (value, []))[1].append(n)
        return {
            key if len(ns) == len(each) else "_".join([key, *map(str, ns)]): value
            for (key, _), (value, ns) in readers.items()
        }

    def in_turn_each(self, model: str, group: str) -> list[dict]:
        """evaluate_<group>'s settings for each artifact, in turn (loraforge.measure.evaluate_one's)."""
        gates = self.config["evaluation"]["gates"]
        return [
            {
                "artifact": a,
                "kind": self.artifact_kind(a),
                "gates": gates.get(a, {}),
                "weights": self.adapter_weights(model),
                "vllm": self.vllm_settings(model, a),
                "lm_eval": self.lm_eval if a in self.answering else None,
            }
            for a in self.in_turn(group)
        ]

    def in_turn_mem_mb(self, model: str, group: str) -> int:
        """One artifact at a time: the most any of them needs (sized from its own inputs, as evaluate_artifact)."""
        return max(
            self.evaluation_mem_mb(model, a, inputs_mb(*self.evaluation_inputs(model, a).values()))
            for a in self.in_turn(group)
        )

    def _revision_inputs(self, model: str) -> dict:
        """The merge check and merged model of ``model``'s revision, with a merged form: its lineage."""
        if not self.merged:
            return {}
        return {"merge": paths.MERGE_CHECK.format(adapter=self.teacher(model)), "merged": self.model_dir(model)}

    def register_ggufs_inputs(self, model: str) -> dict:
        """Every GGUF of one model (a merged or compressed one), registered in one job: the GGUFs and their build
        checks in the order of ``gguf_types``, the evaluations of those measured (:meth:`measured_ggufs`), the
        revision's merge check and merged model; an adapter's LoRA GGUF too where it has that form
        (:meth:`lora_registration_inputs`, its keys prefixed ``lora_``)."""
        inputs = {
            "ggufs": [self.gguf(model, t) for t in self.gguf_types],
            "checks": [self.gguf_check(model, t) for t in self.gguf_types],
            **self._revision_inputs(model),
        }
        if self.measured_ggufs():
            inputs["metrics"] = [self.metrics(model, t) for t in self.measured_ggufs()]
        if self.lora_form(model):
            inputs |= {f"lora_{k}": v for k, v in self.lora_registration_inputs(model).items()}
        return inputs

    def lora_registration_inputs(self, adapter: str) -> dict:
        """An adapter's LoRA GGUF, its build check and (with evaluation) the evaluations of the pairs it was
        measured in: one per base GGUF type."""
        lora = self.lora_gguf_of(adapter)
        inputs = {"gguf": lora, "check": f"{lora}.json"}
        measured = [f"{LORA}{t}" for t in self.gguf_types if self.evaluated_form(f"{LORA}{t}")]
        if measured:
            inputs["metrics"] = [self.metrics(adapter, art) for art in measured]
        return inputs

    def measured_ggufs(self) -> list[str]:
        """The GGUF types whose evaluation a registration carries (the others are registered with their build
        check only)."""
        return [t for t in self.gguf_types if self.evaluated_form(t)]

    def register_inputs(self, model: str, variant: str) -> dict:
        """register_model's inputs (a GPU-serving form, a LoRA-only revision's LoRA GGUF; a model's GGUFs:
        :meth:`register_ggufs_inputs`):
        the registered file, its build check, the merge check and model dir of its revision, and (with evaluation)
        its metrics: registration waits for them, so a failing quality gate blocks it."""
        common = self._revision_inputs(model)  # the merged model is registered with the version
        if variant == self.lora_variant:  # a LoRA-only revision's LoRA GGUF
            inputs = self.lora_registration_inputs(model)
            if "metrics" in inputs:  # its numbers are the pairs'
                inputs["lora_metrics"] = inputs.pop("metrics")
            return {**inputs, **common}
        if variant.startswith(VLLM_LORA):  # the adapter's PEFT directory, served on the base's checkpoint
            scheme = variant.removeprefix(VLLM_LORA)
            inputs = {**common, **self.adapter_inputs(model)}
            inputs.update(checkpoint=self.hfq_dir("base", scheme), check=self.hfq_check("base", scheme))
            if self.evaluated_form(variant):
                inputs["metrics"] = self.metrics(model, variant)
            return inputs
        if variant in self.hfq_schemes:
            inputs = {"checkpoint": self.hfq_dir(model, variant), "check": self.hfq_check(model, variant), **common}
        else:
            inputs = {"gguf": self.gguf(model, variant), "check": self.gguf_check(model, variant), **common}
        if self.evaluated_form(variant):
            inputs["metrics"] = self.metrics(model, variant)
        return inputs

    def deploy_inputs(self, adapter: str) -> dict:
        t = self.deploy_type
        inputs = self.adapter_inputs(adapter)
        if self.merged:
            inputs.update(merged_gguf=self.gguf(adapter, t), merged=paths.MERGED.format(adapter=adapter))
        if self.lora_form(adapter):
            inputs["base_gguf"] = self.gguf("base", t)
            inputs["lora_gguf"] = self.lora_gguf_of(adapter)
        if adapter in self.hfq_adapters:
            inputs["checkpoints"] = [self.hfq_dir(adapter, s) for s in self.hfq_schemes]
        if self.vllm_lora_form(adapter):
            inputs["base_checkpoints"] = [self.hfq_dir("base", s) for s in self.hfq_schemes]
        if self.evaluate:
            inputs["metrics"] = [self.metrics(adapter, art) for art in self.artifacts_of(adapter)]
            if self.evaluate_base:
                inputs["base_metrics"] = paths.BASE_METRICS
        if self.split:
            inputs["splits"] = [paths.SPLIT_CHECK.format(model=adapter, gguf_type=t) for t in self.gguf_types]
        return inputs

    # --- resources -----------------------------------------------------------------------------------------

    def bounded_mem_mb(self, estimate_mb: float, runtime_mb: int = 1500) -> int:
        """A torch job's mem_mb: its whole-model estimate, or the memory budget (plus the runtime's own) when a
        model that large would stream layer by layer within it."""
        if self.budget_mb is None:
            return int(estimate_mb)
        return int(min(estimate_mb, self.budget_mb + runtime_mb))

    def merge_mem_mb(self, base_mb: float, inputs_mb: float = 0.0) -> int:
        """Streaming: largest tensor + constant; the PEFT check (and method peft) holds the model twice; the
        reference, where the merge job computes it beside the merge, as compute_reference would (the streaming
        merge beside it holds a few blocks of rows) (``inputs_mb``: all its inputs)."""
        merge = self.config["merge"]
        if merge["check"] and merge["method"] != "peft":
            mb = self.bounded_mem_mb(1500 + 3 * base_mb)
        else:
            mb = int(1500 + (3 if merge["method"] == "peft" else 0.2) * base_mb)
        return max(mb, self.bounded_mem_mb(2000 + 3 * inputs_mb)) if self.reference_in_merge else mb

    def evaluation_mem_mb(self, model: str, artifact: str, inputs_mb: float) -> int:
        """torch steps (HF, PEFT) stream within the budget; llama.cpp maps the GGUF whole; vLLM loads it whole
        (loraforge.forms)."""
        return self.form(artifact).evaluation_mem_mb(self, inputs_mb, self.served_by_vllm(model, artifact))


def size_mb(path) -> float:
    """MB of a file or directory tree that exists; 0 for one not built yet."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size / 2**20
    if not p.exists():
        return 0.0
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20


_TREES: dict[tuple[str, int], int] = {}  # (directory, its mtime) -> bytes of the files under it


def inputs_mb(*inputs) -> float:
    """MB of a job's inputs (paths, or Snakemake's ``input``), for its ``mem_mb``: a file's size, a directory's
    files (a model directory is its weights; Snakemake's ``input.size_mb`` counts a directory as the 4 KB of its own
    entry). An input not built yet raises FileNotFoundError naming it, which Snakemake takes as "evaluate this
    resource again when the job's inputs exist" (a job's memory is then sized by the files it will really read).
    Synchronous: ``input.size_mb`` starts an event loop per job, a tenth of a large dry run's time."""
    total = 0
    for item in inputs:
        for path in [item] if isinstance(item, (str, os.PathLike)) else item:
            total += _bytes(os.fspath(path))
    return total / 2**20


def _bytes(path: str) -> int:
    st = os.stat(path)  # FileNotFoundError(filename=path): not built yet
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    key = (path, st.st_mtime_ns)
    if key not in _TREES:
        _TREES[key] = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    return _TREES[key]
