"""What a validated config means for the artifact graph: which models get which artifacts. No Snakemake here:
``rules/common.smk`` builds one ``Plan`` and the rules ask it; unit tests build them from plain dicts
(tests/test_workflow_plan.py).

``Plan`` is the rules' one front, made of parts by job: the names (here), their paths and the targets
(:mod:`.targets`), each job's inputs and memory (:mod:`.jobs`), recorded settings (:mod:`.settings`), the config's
cross-field checks (:mod:`.config_checks`) and the checks of inputs before any job (:mod:`.preflight`). What each
artifact form is lives in :mod:`loraforge.forms`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from ..errors import PipelineError
from ..forms import LORA, VLLM_LORA, Form, form_of
from ..hfquant import SCHEMES
from . import paths
from .config_checks import ConfigError, answering_forms, check_evaluation, check_promote
from .jobs import JobInputs, size_mb
from .settings import Settings
from .targets import Targets

__all__ = ["ConfigError", "Plan", "size_mb"]

log = logging.getLogger(__name__)


def _never(_path: str) -> bool:
    return False


class Plan(Targets, JobInputs, Settings):
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
        if skip is None:  # the reference is the adapter through PEFT in float32: in bfloat16 only when named
            named = set(evaluation["gates"]) | set(evaluation["answer_forms"] or [])
            skip = [] if "adapter" in named else ["adapter"]
        self.skipped = set(skip) if self.evaluate else set()
        check_evaluation(self, evaluation)
        self.evaluate_base = self.evaluate and "base" not in self.skipped
        self.texts: dict[str, str] = dict(evaluation["texts"]) if self.evaluate else {}
        self.prompts: str | None = evaluation["prompts"] if self.evaluate else None  # the generation checks
        self.lm_eval: dict | None = evaluation["lm_eval"] if self.evaluate else None  # a user's lm-eval tasks
        deploy = config["deploy"]
        self.deploy = deploy["enabled"]
        self.split = deploy["split_max_size"]  # GGUFs over it also as llama.cpp split sets
        self.deploy_type = deploy["gguf_type"] or (self.quants[0] if self.quants else self.float_type)
        if self.deploy_type not in self.gguf_types:
            raise ConfigError(
                "deploy.gguf_type", f"{self.deploy_type} is not built (one of {', '.join(self.gguf_types)})"
            )
        self.answering = answering_forms(self, evaluation)  # the artifacts that answer evaluation.prompts
        self.promote = config.get("promote")
        self.promote_quant = (self.promote or {}).get("candidate_quant")
        if self.promote:
            check_promote(self, evaluation)
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
        self.vllm_scored = bool(hfq and hfq["vllm"])  # the checkpoint forms also scored through vLLM itself
        if not hfq:
            return
        if self.vllm_scored:
            from ..vllm import tool_python as vllm_python

            try:
                vllm_python()
            except PipelineError as e:
                raise ConfigError("hf_quant.vllm", str(e)) from None
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

    def served_by_vllm(self, model: str, artifact: str) -> bool:
        """Whether the evaluation of ``model``'s ``artifact`` also scores it through vLLM (hf_quant.vllm: a
        checkpoint form, or the merged model of an adapter that hf_quant.models sends to vLLM)."""
        return self.vllm_scored and self.form(artifact).served_by_vllm(self, model, artifact)

    def vllm_settings(self, model: str, artifact: str) -> dict | None:
        """How the evaluation of ``model``'s ``artifact`` goes through vLLM (loraforge.measure.evaluate_one's
        ``vllm``); None where it does not."""
        if not self.served_by_vllm(model, artifact):
            return None
        return {"max_minutes": self.hfq["vllm_max_minutes"]}

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
        if not self.hfq_multi_lora:
            return []  # asked for every model's artifacts: a thousand adapters' plan asks a thousand times
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

    def check_inputs(self) -> None:
        """Bad input fails here, in a second, before any job runs (loraforge.workflow.preflight)."""
        from .preflight import check_inputs

        check_inputs(self)
