"""What a validated config means for the artifact graph: which models get which artifacts, under which paths,
and the cross-field checks a JSON schema cannot express. No Snakemake here: ``rules/common.smk`` builds one
``Plan`` and the rules ask it; unit tests build them from plain dicts (tests/test_workflow_plan.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

from ..errors import PipelineError
from ..forms import LORA, VLLM_LORA, Form, form_of
from ..hfquant import SCHEMES
from . import paths

log = logging.getLogger(__name__)


class ConfigError(PipelineError):
    """A config that cannot build: ``str(err)`` is ``config <key>: <problem>``."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"config {key}: {problem}")
        self.key = key


def _never(_path: str) -> bool:
    return False


class Plan:
    """The artifact graph of one config (already validated against schemas/config.schema.yaml, defaults filled).

    ``produced`` says whether a path is an output of the workflow itself (the demo builds its base, adapters and
    texts): such inputs are checked by the job that makes them, not before any job. ``notify`` takes the lines a
    user should see while the graph is built (Snakemake's logger in the workflow).
    """

    def __init__(
        self, config: dict, produced: Callable[[str], bool] = _never, notify: Callable[[str], None] = log.info
    ):
        from ..quantization import IMATRIX_REQUIRED, row_multiple

        self.config = config
        self.produced = produced
        self.notify = notify
        self.base = config["base_model"]
        self.adapters = list(config["adapters"])
        self.quants = list(config["quantize"]["types"])
        self.float_type = config["convert"]["outtype"].upper()
        self.convert_check = config["convert"]["check"]
        self.threads = config["threads"]
        self.evaluate = config["evaluation"]["enabled"]
        self.register = config["registry"]["enabled"]
        # SQLite: every rule that writes the registry runs beside the file, on the submit host; PostgreSQL: anywhere
        self.registry_local = not config["registry"]["path"].startswith(("postgresql://", "postgres://"))
        if not self.registry_local and not config["registry"]["store_dir"]:
            raise ConfigError(
                "registry.store_dir", "a PostgreSQL registry needs a store directory that every host sees"
            )
        self.imatrix = config["quantize"]["imatrix"]
        self.imat_quants = [f"{t}-imat" for t in self.imatrix["types"]] if self.imatrix else []
        for t in self.quants:
            if t in IMATRIX_REQUIRED:
                raise ConfigError(
                    "quantize.types",
                    f"{t} needs an importance matrix: list it under quantize.imatrix.types (with a calibration "
                    "text) instead",
                )
        self.gguf_types = [self.float_type, *self.quants, *self.imat_quants]
        # a narrowed MLP's width: the row length every GGUF type needs for its own blocks (256 with K-quants)
        self.row_multiple = max(row_multiple(t) for t in self.gguf_types)
        self.lora = config["lora"]["enabled"]
        self.lora_type = config["lora"]["outtype"].upper()
        self.lora_variant = f"{LORA}{self.lora_type}"
        # False: a LoRA-only revision (no merged model, GGUFs or evaluations of it; the base's GGUFs are shared)
        self.merged = config["merge"]["enabled"]
        if not self.merged and not self.lora:
            raise ConfigError("merge.enabled", "false needs lora.enabled: true (else no form of the adapters builds)")
        if "base" in self.adapters:
            raise ConfigError(
                "adapters.base", "'base' names the base model's own GGUFs (results/gguf/base); rename the adapter"
            )
        self.compress = config["compress"]
        self.compressed: dict[str, tuple[str, str]] = {}  # <adapter>-<spec> -> (adapter, spec)
        if self.compress and not self.merged:
            raise ConfigError("compress", "compresses the merged model: it needs merge.enabled: true")
        if config["deploy"]["split_max_size"] and not self.merged:
            raise ConfigError("deploy.split_max_size", "splits the merged GGUFs: it needs merge.enabled: true")
        if self.compress:
            for a in self.compress.get("adapters") or self.adapters:
                if a not in self.adapters:
                    raise ConfigError("compress.adapters", f"no adapter {a!r} (one of {', '.join(self.adapters)})")
                for s in self.compress["specs"]:
                    self.compressed[f"{a}-{s}"] = (a, s)
            clash = sorted(set(self.compressed) & set(self.adapters))
            if clash:
                raise ConfigError(
                    "compress.specs", f"{clash[0]} is both an adapter and a compressed model's name; rename one"
                )
        self._init_hf_quant(config)
        # what gets GGUFs: every adapter's merged model, the base itself for the LoRA GGUF form, compressed models
        self.models = (self.adapters if self.merged else []) + (["base"] if self.lora else []) + list(self.compressed)
        # what has a reference-based evaluation and registry entries
        self.evaluated = self.adapters + list(self.compressed)
        # every evaluated form: PEFT-applied, merged, the float GGUF, every quantized GGUF, each base GGUF with
        # the adapter's LoRA GGUF, and the compressed models' HF forms
        self.artifacts = (
            ["adapter"]
            + (["merged", *self.gguf_types] if self.merged else [])
            + ([f"{LORA}{t}" for t in self.gguf_types] if self.lora else [])
            + (["pruned", "distilled"] if self.compress else [])
            + (list(self.hfq_schemes) if self.hfq_adapters or self.hfq_compressed else [])
            + ([f"{VLLM_LORA}{s}" for s in self.hfq_schemes] if self.hfq_multi_lora else [])
        )
        evaluation = config["evaluation"]
        if self.evaluate and not evaluation["texts"]:
            raise ConfigError(
                "evaluation.texts", "no text named: name at least one text file, or set evaluation.enabled: false"
            )
        skip = evaluation["skip"]
        if skip is None:  # a LoRA-only revision's reference is the adapter through PEFT (float32): not again
            skip = [] if self.merged else ["adapter"]
        self.skipped = set(skip) if self.evaluate else set()
        # a form this config does not build may be named (the same skip list serves a merged build and a LoRA-only
        # revision of it: --config 'merge={enabled: false}'); a name that is no form at all is a typo
        forms = ["base", "adapter", "merged", "pruned", "distilled", *self.gguf_types]
        forms += [f"{LORA}{t}" for t in self.gguf_types] + list(SCHEMES) + [f"{VLLM_LORA}{s}" for s in SCHEMES]
        for name in evaluation["skip"] or []:
            if name not in forms:
                raise ConfigError(f"evaluation.skip.{name}", f"no such artifact (one of {', '.join(forms)})")
        if self.evaluate and not set(self.artifacts) - self.skipped:
            raise ConfigError("evaluation.skip", "skips every artifact: set evaluation.enabled: false instead")
        self.evaluate_base = self.evaluate and "base" not in self.skipped
        for gate in evaluation["gates"]:
            if gate not in self.artifacts:
                raise ConfigError(f"evaluation.gates.{gate}", f"no such artifact (one of {', '.join(self.artifacts)})")
            if gate in self.skipped:
                raise ConfigError(f"evaluation.gates.{gate}", "is in evaluation.skip: the gate would never run")
        self.texts: dict[str, str] = dict(evaluation["texts"]) if self.evaluate else {}
        self.promote = config.get("promote")
        self.promote_quant = (self.promote or {}).get("candidate_quant")
        if self.promote:
            if not self.register or not self.evaluate:
                raise ConfigError("promote", "needs registry.enabled and evaluation.enabled")
            if not self.merged:
                raise ConfigError(
                    "promote", "compares versions of the merged GGUFs: it needs merge.enabled: true for now"
                )
            if self.promote_quant not in self.gguf_types:
                raise ConfigError(
                    "promote.candidate_quant",
                    f"{self.promote_quant} is not built (one of {', '.join(self.gguf_types)})",
                )
            if self.promote_quant in self.skipped:
                raise ConfigError(
                    "promote.candidate_quant",
                    f"{self.promote_quant} is in evaluation.skip: promotion compares its numbers",
                )
            for text in self.promote["require"]:
                if text not in evaluation["texts"]:
                    raise ConfigError(
                        f"promote.require.{text}",
                        f"no such evaluation text (one of {', '.join(evaluation['texts'])})",
                    )
        deploy = config["deploy"]
        self.deploy = deploy["enabled"]
        self.split = deploy["split_max_size"]  # GGUFs over it also as llama.cpp split sets
        self.deploy_type = deploy["gguf_type"] or (self.quants[0] if self.quants else self.float_type)
        if self.deploy_type not in self.gguf_types:
            raise ConfigError(
                "deploy.gguf_type", f"{self.deploy_type} is not built (one of {', '.join(self.gguf_types)})"
            )
        self.budget_mb = config["memory"]["budget_mb"]
        self.lora_gguf = paths.fill(paths.LORA_GGUF, lora_type=self.lora_type)
        self._lora_refusal = functools.cache(self._lora_refusal_uncached)
        self._told: set[str] = set()  # adapters whose missing LoRA form was logged
        if not self.merged:
            for name in self.adapters:
                if why := self._lora_refusal(name):
                    raise ConfigError(
                        f"adapters.{name}", f"no LoRA GGUF form ({why}): it needs the merged form (merge.enabled: true)"
                    )

    def _init_hf_quant(self, config: dict) -> None:
        """GPU-serving checkpoints (``hf_quant``): which merged models get them, and whether the base does (for
        vLLM's multi-LoRA form)."""
        hfq = config.get("hf_quant")  # its defaults filled from the schema (schema_values.fill_defaults)
        self.hfq = hfq
        self.hfq_schemes: list[str] = list(hfq["schemes"]) if hfq else []
        self.hfq_adapters: list[str] = []  # adapters whose merged models get checkpoints
        self.hfq_compressed: list[str] = []  # compressed models that do
        self.hfq_multi_lora = bool(hfq and hfq["multi_lora"])
        self._vllm_refusal = functools.cache(self._vllm_refusal_uncached)
        if not hfq:
            return
        for s in self.hfq_schemes:
            if s not in SCHEMES:
                raise ConfigError("hf_quant.schemes", f"{s} is not one of {', '.join(SCHEMES)}")
        from ..hfquant import tool_python

        try:
            tool_python()
        except PipelineError as e:
            raise ConfigError("hf_quant", str(e)) from None
        listed = hfq.get("models")
        names = self.adapters + list(self.compressed)
        for a in listed or []:
            if a not in names:
                raise ConfigError(
                    "hf_quant.models", f"no adapter or compressed model {a!r} (one of {', '.join(names)})"
                )
        if not self.merged and listed:
            raise ConfigError(
                "hf_quant.models",
                "quantizes merged models: with merge.enabled false only the multi-LoRA form (the base) builds",
            )
        if not self.merged and not self.hfq_multi_lora:
            raise ConfigError("hf_quant", "with merge.enabled false only multi_lora can build: set it true")
        chosen = (listed or names) if self.merged else []
        self.hfq_adapters = [a for a in chosen if a in self.adapters]
        self.hfq_compressed = [c for c in chosen if c in self.compressed]

    # --- what each name is ---------------------------------------------------------------------------------

    def adapter_specs(self, name: str) -> list[dict]:
        """The adapter stack of one configured name: [{path, weight}, ...]."""
        entry = self.config["adapters"][name]
        if isinstance(entry, str):
            return [{"path": entry, "weight": 1.0}]
        return [{"path": e["path"], "weight": float(e.get("weight", 1.0))} for e in entry]

    def adapter_weights(self, name: str) -> list[float]:
        """The stack weights of an adapter; none for a compressed model (it has no PEFT form)."""
        if name not in self.adapters:
            return []
        return [s["weight"] for s in self.adapter_specs(name)]

    def compress_spec(self, name: str) -> dict:
        return self.compress["specs"][self.compressed[name][1]]

    def distilled(self, name: str) -> bool:
        return bool(self.compress_spec(name).get("distill"))

    def teacher(self, name: str) -> str:
        """The adapter whose merged model ``name`` is, or was compressed from."""
        return self.compressed[name][0] if name in self.compressed else name

    def model_dir(self, name: str) -> str:
        """The HF model directory a GGUF of ``name`` is converted from (the base's own, for ``base``)."""
        if name == "base":
            return self.base
        if name in self.compressed:
            return paths.fill(paths.DISTILLED if self.distilled(name) else paths.PRUNED, model=name)
        return paths.fill(paths.MERGED, adapter=name)

    @staticmethod
    def form(artifact: str) -> Form:
        """The form of an evaluated artifact (loraforge.forms): how it is scored, stored, labelled and read."""
        return form_of(artifact, SCHEMES)

    @classmethod
    def artifact_kind(cls, artifact: str) -> str:
        """How an evaluated artifact is scored (loraforge.forms.Kind): the evaluate rule's ``kind``."""
        return cls.form(artifact).kind.value

    def stage_dir(self, model: str, stage: str) -> str:
        """The HF model directory of a model's merged, pruned or distilled stage."""
        stage_path = {"merged": paths.MERGED, "pruned": paths.PRUNED, "distilled": paths.DISTILLED}[stage]
        return paths.fill(stage_path, adapter=model, model=model)

    def lora_form(self, name: str) -> bool:
        """Whether adapter ``name`` gets the LoRA GGUF form; what llama.cpp cannot load exactly is skipped, logged
        (and refused, with no merged form to build instead)."""
        if not self.lora or name not in self.adapters:
            return False
        if why := self._lora_refusal(name):
            if name not in self._told:
                self._told.add(name)
                self.notify(f"adapter {name}: no LoRA GGUF form ({why}); its merged form builds")
            return False
        return True

    def _lora_refusal_uncached(self, name: str) -> str | None:
        """Why adapter ``name`` has no exact LoRA GGUF, or None."""
        from ..conversion.lora import refusal

        specs = self.adapter_specs(name)
        if len(specs) > 1:
            return "a stack of several adapters has no single LoRA GGUF"
        if self.produced(specs[0]["path"]):
            return None  # built by this workflow (the demo's): a plain LoRA
        try:
            return refusal(specs)
        except PipelineError:
            return None  # a broken adapter: check_inputs() names the problem in one line

    def lora_adapters(self) -> list[str]:
        return [a for a in self.adapters if self.lora_form(a)]

    def vllm_lora_form(self, name: str) -> bool:
        """Whether adapter ``name`` gets vLLM's multi-LoRA form (the base's checkpoint + the PEFT directory);
        what vLLM's LoRA cannot serve is skipped, logged once."""
        if not self.hfq_multi_lora or name not in self.adapters:
            return False
        if why := self._vllm_refusal(name):
            if f"vllm:{name}" not in self._told:
                self._told.add(f"vllm:{name}")
                self.notify(f"adapter {name}: no vLLM multi-LoRA form ({why})")
            return False
        return True

    def _vllm_refusal_uncached(self, name: str) -> str | None:
        from ..hfquant import vllm_lora_refusal

        specs = self.adapter_specs(name)
        if len(specs) == 1 and self.produced(specs[0]["path"]):
            return None  # built by this workflow (the demo's): a plain LoRA
        try:
            return vllm_lora_refusal(specs)
        except PipelineError:
            return None  # a broken adapter: check_inputs() names the problem in one line

    def vllm_lora_adapters(self) -> list[str]:
        return [a for a in self.adapters if self.vllm_lora_form(a)]

    def hfq_models(self) -> list[str]:
        """What gets GPU-serving checkpoints: the listed adapters' merged models and compressed models, and the
        base when an adapter has the multi-LoRA form."""
        out = list(self.hfq_adapters) + list(self.hfq_compressed)
        return out + (["base"] if self.vllm_lora_adapters() else [])

    def artifacts_of(self, name: str) -> list[str]:
        """The evaluated artifacts of one adapter or compressed model (less those in evaluation.skip)."""
        return [a for a in self._artifacts_of(name) if a not in self.skipped]

    def _artifacts_of(self, name: str) -> list[str]:
        schemes = self.hfq_schemes if name in self.hfq_models() else []
        if name in self.compressed:
            return ["pruned", *(["distilled"] if self.distilled(name) else []), *self.gguf_types, *schemes]
        own = [
            a
            for a in self.artifacts
            if a not in ("pruned", "distilled")
            and a not in self.hfq_schemes
            and not a.startswith(VLLM_LORA)
            and (not a.startswith(LORA) or self.lora_form(name))
        ]
        vllm = [f"{VLLM_LORA}{s}" for s in self.hfq_schemes] if self.vllm_lora_form(name) else []
        return own + list(schemes) + vllm

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

    # --- paths ---------------------------------------------------------------------------------------------

    def gguf(self, model: str, gguf_type: str) -> str:
        return paths.GGUF.format(model=model, gguf_type=gguf_type)

    def gguf_check(self, model: str, gguf_type: str) -> str:
        return paths.GGUF_CHECK.format(model=model, gguf_type=gguf_type)

    def lora_gguf_of(self, adapter: str) -> str:
        return self.lora_gguf.format(adapter=adapter)

    def hfq_dir(self, model: str, scheme: str) -> str:
        return paths.HFQ.format(model=model, scheme=scheme)

    def hfq_check(self, model: str, scheme: str) -> str:
        return paths.HFQ_CHECK.format(model=model, scheme=scheme)

    def hfq_checkpoints(self) -> list[str]:
        return [self.hfq_dir(m, s) for m in self.hfq_models() for s in self.hfq_schemes]

    def evaluated_form(self, artifact: str) -> bool:
        """Whether ``artifact`` (of any model) is evaluated: evaluation on and the artifact not skipped."""
        return self.evaluate and artifact not in self.skipped

    def report_inputs(self) -> dict:
        """report_quality's inputs: every evaluation, and the base model's own unless skipped."""
        return {"metrics": self.evaluations(), **({"base": paths.BASE_METRICS} if self.evaluate_base else {})}

    def metrics(self, model: str, artifact: str) -> str:
        return paths.METRICS.format(model=model, artifact=artifact)

    def receipts(self) -> list[str]:
        if not self.register:
            return []
        merged = self.evaluated if self.merged else []
        out = [paths.RECEIPT.format(model=m, variant=t) for m in merged for t in self.gguf_types]
        out += [paths.RECEIPT.format(model=a, variant=self.lora_variant) for a in self.lora_adapters()]
        out += [
            paths.RECEIPT.format(model=m, variant=s) for m in self.hfq_models() if m != "base" for s in self.hfq_schemes
        ]
        vllm = [f"{VLLM_LORA}{s}" for s in self.hfq_schemes]
        return out + [paths.RECEIPT.format(model=a, variant=v) for a in self.vllm_lora_adapters() for v in vllm]

    def registered_variants(self) -> list[str]:
        """Every ``{variant}`` register_model takes."""
        vllm = [f"{VLLM_LORA}{s}" for s in self.hfq_schemes]
        return [*self.gguf_types, self.lora_variant, *self.hfq_schemes, *vllm]

    def promotions(self) -> list[str]:
        return [paths.PROMOTION.format(adapter=a) for a in self.adapters] if self.promote else []

    def evaluations(self) -> list[str]:
        return [self.metrics(m, art) for m in self.evaluated for art in self.artifacts_of(m)]

    def build_benchmarks(self, name: str, artifact: str) -> list[str]:
        """The benchmark files of the jobs that build one artifact of ``name`` (for the report's build time):
        its form's build steps (loraforge.forms)."""
        return self.form(artifact).build_steps(self, name, artifact)

    def benchmark(self, rule: str, key: str) -> str:
        return paths.benchmark(rule, key)

    def model_steps(self, name: str) -> list[str]:
        """The benchmark files of the jobs that make ``name``'s HF model: its merge, or its pruning (and
        distillation) for a compressed model."""
        if name not in self.compressed:
            return [paths.benchmark("merge_adapter", name)]
        steps = [paths.benchmark("prune_model", name)]
        if self.distilled(name):
            steps.append(paths.benchmark("distill_model", name))
        return steps

    def report_benchmarks(self) -> dict[str, list[str]]:
        return {f"{m}/{art}": self.build_benchmarks(m, art) for m in self.evaluated for art in self.artifacts_of(m)}

    def targets(self) -> list[str]:
        """Every file ``rule all`` asks for."""
        # the base's GGUFs where an adapter's LoRA GGUF goes beside them (built once, shared by every adapter)
        models = [m for m in self.models if m != "base" or self.lora_adapters()]
        out = [self.gguf(m, t) for m in models for t in self.gguf_types]
        out += [self.lora_gguf_of(a) for a in self.lora_adapters()]
        out += self.hfq_checkpoints()
        if self.deploy:
            out += [paths.DEPLOY.format(adapter=a) for a in self.adapters]
        if self.split:
            out += [paths.SPLIT.format(model=m, gguf_type=t) for m in self.evaluated for t in self.gguf_types]
        if self.evaluate:
            out.append(paths.REPORT_TABLE)
        out += self.receipts()
        out += self.promotions()
        if self.register:
            out.append(paths.DASHBOARD)
        return out

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
        """What the float32 reference of an adapter is computed from: its merged model, or (LoRA-only) the base with
        the adapter applied through PEFT, unmerged."""
        if self.merged:
            return {"model_dir": paths.MERGED.format(adapter=adapter)}
        return self.adapter_inputs(adapter)

    def lora_check_inputs(self, adapter: str) -> dict:
        """What convert_lora checks the LoRA GGUF against besides running PEFT itself: nothing with a merged form; in
        a LoRA-only revision the evaluation's reference, which is that PEFT float32 model's log-probs already."""
        return {} if self.merged else {"reference": paths.REFERENCE.format(adapter=adapter)}

    def convert_inputs(self, model: str) -> dict:
        """The HF model a float GGUF is converted from; for an adapter's merged model with evaluation on, also its
        float32 reference, which the conversion check compares the GGUF with instead of running the HF model again."""
        inputs = {"model_dir": self.model_dir(model)}
        if self.convert_check:
            inputs.update(self.check_reference(model))
        return inputs

    def check_reference(self, model: str) -> dict:
        """The stored float32 reference the checks of ``model``'s GGUFs compare with instead of running its HF model
        (conversion) or its float GGUF (quantization) again: an adapter's merged model's, where evaluation computes
        it; none for the base and compressed models, whose evaluation references are other models'."""
        if self.evaluate and self.merged and model in self.adapters:
            return {"reference": paths.REFERENCE.format(adapter=model)}
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
        return {**inputs, **self.form(artifact).evaluation_inputs(self, model, artifact)}

    def register_inputs(self, model: str, variant: str) -> dict:
        """The registered file, its build check, the merge check and model dir of its revision, and (with
        evaluation) its metrics: registration waits for them, so a failing quality gate blocks it."""
        common = {}
        if self.merged:  # the merged model is registered with the version, and its merge check holds the lineage
            common = {"merge": paths.MERGE_CHECK.format(adapter=self.teacher(model)), "merged": self.model_dir(model)}
        if variant == self.lora_variant:  # the adapter's LoRA GGUF, an artifact of the same revision
            lora = self.lora_gguf_of(model)
            inputs = {"gguf": lora, "check": f"{lora}.json", **common}
            # its numbers are the pairs': one evaluation per base GGUF type it was measured on
            measured = [f"{LORA}{t}" for t in self.gguf_types if self.evaluated_form(f"{LORA}{t}")]
            if measured:
                inputs["lora_metrics"] = [self.metrics(model, art) for art in measured]
            return inputs
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

    def merge_mem_mb(self, base_mb: float) -> int:
        """Streaming: largest tensor + constant; the PEFT check (and method peft) holds the model twice."""
        merge = self.config["merge"]
        if merge["check"] and merge["method"] != "peft":
            return self.bounded_mem_mb(1500 + 3 * base_mb)
        return int(1500 + (3 if merge["method"] == "peft" else 0.2) * base_mb)

    def evaluation_mem_mb(self, artifact: str, inputs_mb: float) -> int:
        """torch steps (HF, PEFT) stream within the budget; llama.cpp maps the GGUF whole (loraforge.forms)."""
        return self.form(artifact).evaluation_mem_mb(self, inputs_mb)

    # --- checks before any job -----------------------------------------------------------------------------

    def check_inputs(self) -> None:
        """Bad input fails here, in a second, before any job runs: headers, JSON and texts only, no weights."""
        from ..compression import check_spec
        from ..evaluation.windows import read_text
        from ..preflight import inspect_base, validate_inputs
        from ..quantization.imatrix import overlap

        base_built = self.produced(self.base)
        base = None
        if not base_built:
            try:
                base = inspect_base(self.base)
            except PipelineError as e:
                raise ConfigError("base_model", str(e)) from None
        for name in self.adapters:
            specs = self.adapter_specs(name)
            if base_built or any(self.produced(s["path"]) for s in specs):
                continue
            try:
                validate_inputs(self.base, specs)
            except PipelineError as e:
                # the base's own files (its tokenizer, which no adapter replaces) are the base's problem
                own = str(e).startswith((f"{self.base}", f"{base.path}")) if base else False
                raise ConfigError("base_model" if own else f"adapters.{name}", str(e)) from None
        texts = {f"evaluation.texts.{n}": p for n, p in self.texts.items()}
        if self.config["checks"]["text"]:
            texts["checks.text"] = self.config["checks"]["text"]
        if self.imatrix:
            texts["quantize.imatrix.text"] = self.imatrix["text"]
        if self.compress:
            texts["compress.text"] = self.compress["text"]
        if self.hfq:
            texts["hf_quant.text"] = self.hfq["text"]
        for key, path in texts.items():
            if not self.produced(path):
                try:
                    read_text(path)
                except PipelineError as e:
                    raise ConfigError(key, str(e)) from None
        named = {n: p for n, p in self.texts.items() if not self.produced(p)}
        calibration = {
            "quantize.imatrix.text": (self.imatrix or {}).get("text"),
            "compress.text": (self.compress or {}).get("text"),
            "hf_quant.text": (self.hfq or {}).get("text"),
        }
        for key, text in calibration.items():
            if text and not self.produced(text):
                same = overlap(text, named)
                if same:
                    raise ConfigError(
                        key,
                        f"{text} overlaps evaluation.texts.{same}: calibrating on evaluated text makes the scores "
                        "optimistic; use other text",
                    )
        if base is not None and self.hfq and self.hfq_models():
            self._check_hf_quant(base.path)
        if base is not None:
            n_ctx = self.config["evaluation"]["n_ctx"]
            limit = base.config.get("max_position_embeddings")
            if self.evaluate and limit and n_ctx > limit:
                raise ConfigError(
                    "evaluation.n_ctx", f"{n_ctx} is more than the base model's context length ({limit}, config.json)"
                )
            if self.compress:
                for spec_name, spec in self.compress["specs"].items():
                    try:
                        check_spec(spec, base.config, self.row_multiple)
                    except PipelineError as e:
                        raise ConfigError(f"compress.specs.{spec_name}", str(e)) from None

    def _check_hf_quant(self, base_dir) -> None:
        """The group size against the base's rows (an adapter does not change them) and the calibration text's
        length in the base's tokens."""
        from transformers import AutoTokenizer

        from ..hfquant import calibration_windows, group_size_for

        try:
            group_size_for(base_dir, self.hfq["group_size"])
        except PipelineError as e:
            raise ConfigError("hf_quant.group_size", str(e)) from None
        if not self.produced(self.hfq["text"]):
            tokenizer = AutoTokenizer.from_pretrained(str(base_dir), local_files_only=True)
            try:
                calibration_windows(tokenizer, self.hfq["text"], self.hfq["samples"], self.hfq["seq_len"])
            except PipelineError as e:
                raise ConfigError("hf_quant.text", str(e)) from None


def size_mb(path) -> float:
    """MB of a file or directory tree that exists; 0 for one not built yet (a job's resources at planning)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size / 2**20
    if not p.exists():
        return 0.0
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20
