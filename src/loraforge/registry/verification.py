"""Verification: every stored artifact re-hashed against what was registered, and what a running server serves
against the registered probes (loraforge.serving)."""

from __future__ import annotations

from pathlib import Path

from ..errors import PipelineError
from ..serving import TOLERANCE, compare, get_json, probe_llama_server, probe_vllm_server, server_kind
from .errors import StoredFileChanged, StoredFileMissing


class Verification:
    """``verify`` (a part of :class:`Registry`)."""

    def verify(self, name: str | None = None) -> list[dict]:
        """Every stored artifact re-hashed: ok, missing or changed; recorded-only artifacts are 'not stored'."""
        out = []
        for v in self.versions(name):
            for a in v.artifacts:
                if a.store_path is None:
                    status = "not stored"
                else:
                    try:
                        self.store.verify(Path(a.store_path), a.sha256)
                        status = "ok"
                    except StoredFileMissing:
                        status = "missing"
                    except StoredFileChanged:
                        status = "changed"
                out.append(
                    {
                        "name": v.name,
                        "version": v.version,
                        "kind": a.kind,
                        "variant": a.variant,
                        "status": status,
                        "path": a.store_path or a.source_path,
                    }
                )
        return out

    def verify_served(
        self,
        url: str,
        name: str,
        version: int | None = None,
        alias: str | None = None,
        variant: str | None = None,
        model: str | None = None,
        tolerance: float = TOLERANCE,
    ) -> dict:
        """Whether the server at ``url`` (llama-server or vLLM) serves ``name``'s version (by number, by alias, else
        the newest): the version's probes of that engine (one per artifact, or ``variant``'s) are sent to it and
        compared (loraforge.serving.compare); ``ok`` when one of them matches, and ``serves`` names the closest
        (a merged GGUF and the base with its LoRA GGUF are one model: both may match). ``model``: the served model
        to ask a vLLM server (a ``--lora-modules`` name), else the first it lists."""
        mv = self.resolve(name, version, alias)
        engine = server_kind(url)
        family = "vLLM" if engine == "vllm" else "llama-server"
        probes = [
            (label, ev["probe"])
            for a in mv.artifacts
            if variant in (None, a.variant)
            for label, ev in a.measured()
            if (ev.get("probe") or {}).get("engine", "").startswith(family)
        ]
        where = f"{name} v{mv.version}" + (f" {variant}" if variant else "")
        if not probes:
            raise PipelineError(
                f"{where}: no artifact has a probe of {family} (an evaluation records one for a GGUF, and for a "
                "checkpoint scored through vLLM; one made before probes existed has none: re-run it, register again)"
            )
        if engine == "vllm" and model is None:
            listed = get_json(url.rstrip("/") + "/v1/models")
            model = listed["data"][0]["id"]
        results = []
        for label, probe in probes:
            if engine == "vllm":
                served = probe_vllm_server(url, model, probe["prompt"])
            else:
                served = probe_llama_server(url, probe["prompt"])
            results.append({"artifact": label, **compare(probe, served, tolerance)})
        # the closest match names what is served: forms of one model at other precisions may match too
        matched = sorted((r for r in results if r["ok"]), key=lambda r: r["mean_abs_logprob_diff"])
        return {
            "name": name,
            "version": mv.version,
            "url": url,
            "server": family,
            "model": model,
            "ok": bool(matched),
            "serves": matched[0]["artifact"] if matched else None,
            "probes": results,
        }
