"""The paths of a config's artifacts and the targets ``rule all`` asks for: a part of ``Plan`` (its mixin)."""

from __future__ import annotations

from ..forms import VLLM_LORA
from . import paths


class Targets:
    """Paths of artifacts, receipts, benchmarks and every target (``Plan`` provides the names they need)."""

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
        out = [paths.RECEIPT.format(model=m, variant=t) for m in self.gguf_registered() for t in self.gguf_types]
        out += [paths.RECEIPT.format(model=a, variant=self.lora_variant) for a in self.lora_adapters()]
        out += [
            paths.RECEIPT.format(model=m, variant=s) for m in self.hfq_models() if m != "base" for s in self.hfq_schemes
        ]
        vllm = [f"{VLLM_LORA}{s}" for s in self.hfq_schemes]
        return out + [paths.RECEIPT.format(model=a, variant=v) for a in self.vllm_lora_adapters() for v in vllm]

    def dashboard_receipts(self) -> list[str]:
        """What the dashboard waits for: one receipt of each registration job (a register_ggufs(_lora) job writes
        all of a model's: its first GGUF type's stands for them). It reads the registry, not the receipts, and a
        thousand adapters' dashboard is a thousand dependencies for Snakemake to resolve, not five thousand."""
        per_job = set(self.receipts()) - {
            paths.RECEIPT.format(model=m, variant=v)
            for m in self.gguf_registered()
            for v in self.gguf_variants(self.lora_form(m))[1:]
        }
        return [r for r in self.receipts() if r in per_job]

    def registered_variants(self) -> list[str]:
        """Every ``{variant}`` register_model takes: the GPU-serving forms, and a LoRA-only revision's LoRA GGUF (a
        model's GGUFs are registered together, the LoRA GGUF of a revision with merged GGUFs with them:
        register_ggufs, register_ggufs_lora)."""
        vllm = [f"{VLLM_LORA}{s}" for s in self.hfq_schemes]
        return [*([] if self.merged else [self.lora_variant]), *self.hfq_schemes, *vllm]

    def gguf_registered(self) -> list[str]:
        """The models whose GGUFs are registered: with a merged form, every adapter's merged model and every
        compressed model."""
        return list(self.evaluated) if self.register and self.merged else []

    def gguf_registered_with(self, lora: bool) -> list[str]:
        """register_ggufs_lora's ``{model}`` (``lora``: the adapters whose LoRA GGUF registers with their merged
        GGUFs) or register_ggufs' (every other model whose GGUFs are registered)."""
        return [m for m in self.gguf_registered() if self.lora_form(m) == lora]

    def gguf_variants(self, lora: bool) -> list[str]:
        """The variants one register_ggufs(_lora) job registers, in order: each GGUF type, then the LoRA GGUF."""
        return [*self.gguf_types, *([self.lora_variant] if lora else [])]

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

    def all_targets(self) -> list[str]:
        """What ``rule all`` names: :meth:`targets` less the files a registration asks for, where the dashboard asks
        for every registration (every file named is one more dependency for Snakemake to resolve: 12 of an
        adapter's 13 with the defaults); the jobs that run are the same."""
        if not self.register:
            return self.targets()
        covered = set(self.receipts())
        covered |= {self.gguf(m, t) for m in self.gguf_registered() for t in self.gguf_types}
        covered |= {self.lora_gguf_of(a) for a in self.lora_adapters()}
        covered |= set(self.hfq_checkpoints())
        return [t for t in self.targets() if t not in covered]

    def targets(self) -> list[str]:
        """Every file the workflow builds by default (``rule all`` names fewer: :meth:`all_targets`)."""
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
