"""What users load: an Ollama Modelfile for each deployment form of an adapter, and a Hugging Face model card.

A bundle directory per adapter (``results/deploy/<adapter>/``):

- ``Modelfile``: ``FROM`` the merged model's GGUF;
- ``Modelfile.lora`` (when the adapter has the LoRA GGUF form): ``FROM`` the base's GGUF of the same type and
  ``ADAPTER`` the LoRA GGUF;
- with ``hf_quant``, the card's vLLM section: ``vllm serve`` of each compressed-tensors checkpoint of the merged model,
  and of the base's checkpoint with the adapter as a LoRA module (``--enable-lora``);
- ``README.md``: a model card with YAML front matter (``base_model``, ``base_model_relation``, ``license``,
  ``tags``, ``quantized_by``) and the measured numbers of every evaluated artifact.

Paths in the Modelfiles are relative to the bundle, as Ollama resolves them, so ``ollama create -f`` works in place
without copying gigabytes. ``PARAMETER stop`` lists the model's end-of-turn tokens. Ollama derives the prompt
template from the GGUF's own chat template when it recognizes it; a ``TEMPLATE`` cannot be derived from an arbitrary
Jinja template, so for an unrecognized one the Modelfile says so in a comment and the build logs a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from ._version import __version__
from .errors import PipelineError
from .evaluation.metrics import Metrics
from .io.publish import atomic_dir
from .render import number, render

log = logging.getLogger(__name__)

# chat-template markers of the families whose template Ollama recognizes in a GGUF (its template/index.json)
KNOWN_TEMPLATES = {
    "ChatML": ("<|im_start|>",),
    "Llama 3": ("<|start_header_id|>",),
    "Mistral / Llama 2": ("[INST]",),
    "Gemma": ("<start_of_turn>",),
    "Phi-3": ("<|user|>", "<|end|>"),
}
HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def template_family(template: str | None) -> str | None:
    if not template:
        return None
    for family, markers in KNOWN_TEMPLATES.items():
        if all(m in template for m in markers):
            return family
    return None


def stop_tokens(model_dir) -> list[str]:
    """The end-of-turn tokens of a model directory: its EOS and generation_config's eos_token_id(s)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    gen = Path(model_dir) / "generation_config.json"
    if gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids |= set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return [tok.convert_ids_to_tokens(i) for i in sorted(ids)]


def chat_template(model_dir) -> str | None:
    d = Path(model_dir)
    if (d / "chat_template.jinja").exists():
        return (d / "chat_template.jinja").read_text(encoding="utf-8")
    cfg = d / "tokenizer_config.json"
    t = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template") if cfg.exists() else None
    return t if isinstance(t, str) else None


# Reported, not checked here (no Ollama binary): ollama/ollama#14969, per generative-computing/mellea#1651.
OLLAMA_ADAPTER_LAST = "0.34.0"
OLLAMA_ADAPTER_NOTE = (
    f"Ollama {OLLAMA_ADAPTER_LAST} and earlier accept ADAPTER; later releases refuse it in `ollama create` (reported:",
    "ollama/ollama#14969; models created before still serve). With a later Ollama, create from `Modelfile` (the",
    "merged GGUF) where this bundle has one, or serve the pair with llama-server: -m <base GGUF> --lora <LoRA GGUF>.",
)


def modelfile(bundle: Path, from_gguf, stops: list[str], template: str | None, adapter_gguf=None, title="") -> str:
    def rel(p):
        return os.path.relpath(Path(p).resolve(), bundle.resolve())

    lines = [f"# {title}", f"# written by loraforge {__version__}; paths are relative to this file", ""]
    lines.append(f"FROM {rel(from_gguf)}")
    if adapter_gguf:
        lines.append(f"ADAPTER {rel(adapter_gguf)}")
        lines[2:2] = [f"# {line}" for line in OLLAMA_ADAPTER_NOTE]
    family = template_family(template)
    if template is None:
        lines.insert(2, "# no chat template: a completion model (ollama run with a raw prompt)")
    elif family:
        lines.insert(2, f"# prompt template: Ollama takes it from the GGUF's chat template ({family})")
    else:
        lines.insert(2, "# WARNING: Ollama may not recognize this GGUF's chat template; if `ollama show --template`")
        lines.insert(3, "# is empty, add a TEMPLATE (Go template syntax) equivalent to the model's chat_template.jinja")
        log.warning("%s: chat template of no family Ollama recognizes; the Modelfile carries no TEMPLATE", bundle)
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    return "\n".join(lines) + "\n"


def vllm_commands(adapter: str, adapter_dirs, checkpoints, base_checkpoints) -> list[dict]:
    """How vLLM serves each GPU-serving form: a compressed-tensors checkpoint of the merged model, and the base's
    checkpoint with the adapter's PEFT directory as a LoRA module (``--max-lora-rank`` at least the adapter's rank)."""
    out = []
    for ck in checkpoints:
        scheme = json.loads(Path(f"{ck}.json").read_text())["scheme"]
        out.append(
            {
                "form": scheme,
                "path": str(ck),
                "what": f"the merged model as a {scheme} compressed-tensors checkpoint (vLLM, SGLang, TGI)",
                "command": f"vllm serve {ck} --served-model-name {adapter}",
            }
        )
    for ck in base_checkpoints:
        scheme = json.loads(Path(f"{ck}.json").read_text())["scheme"]
        cfg = json.loads((Path(adapter_dirs[0]) / "adapter_config.json").read_text())
        ranks = [cfg["r"], *(cfg.get("rank_pattern") or {}).values()]
        rank = next(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= max(ranks))
        out.append(
            {
                "form": f"vllm-lora-{scheme}",
                "path": str(ck),
                "what": f"the base model as a {scheme} checkpoint, shared by every adapter (vLLM `--enable-lora`)",
                "command": (
                    f"vllm serve {ck} --enable-lora --max-lora-rank {rank} --lora-modules {adapter}={adapter_dirs[0]}"
                ),
            }
        )
    return out


def _license(base_dir, configured: str | None) -> str | None:
    readme = Path(base_dir) / "README.md"
    if readme.exists():
        m = re.match(r"^---\n(.*?)\n---", readme.read_text(encoding="utf-8"), re.S)
        if m:
            import yaml

            front = yaml.safe_load(m.group(1)) or {}
            if front.get("license"):
                return str(front["license"])
    return configured


def _base_model_id(base_dir, adapter_dirs, configured: str | None) -> str | None:
    """The base's Hugging Face id: configured, else the adapter's base_model_name_or_path when it is an id."""
    if configured:
        return configured
    for d in adapter_dirs:
        cfg = Path(d) / "adapter_config.json"
        name = json.loads(cfg.read_text()).get("base_model_name_or_path") if cfg.exists() else None
        if name and HF_ID.match(name) and not Path(name).exists():
            return name
    return None


def model_card(
    name: str,
    adapter: str,
    base_id: str | None,
    license_: str | None,
    quantized_by: str | None,
    files: dict[str, str],
    metrics: dict[str, Metrics],
    base_metrics: Metrics | None,
    merged: bool = True,
    vllm: list[dict] | None = None,
) -> str:
    """The Hugging Face model card (README.md with its YAML front matter) of one adapter's bundle."""
    import yaml

    front = {
        "base_model": base_id,
        "base_model_relation": "finetune" if base_id else None,
        "license": license_,
        "tags": ["gguf", "llama.cpp", "lora", "loraforge"],
        "quantized_by": quantized_by,
    }
    texts = sorted({t for m in metrics.values() for t in m.texts})
    rows = []
    for artifact, m in metrics.items():
        row = {
            "name": artifact,
            "size_mb": m.size_bytes / 1e6 if m.size_bytes else None,
            "bits_per_weight": m.bits_per_weight,
            "mean_kld": m.mean_kld,
            "top1": m.top1_agreement,
            "ppl": {t: tm.ppl for t, tm in m.texts.items()},
        }
        rows.append(row)
        served = m.served or {}
        if served and not served.get("not_scored"):  # as vLLM serves it: its KLD is a lower bound (top-20 lumped)
            rows.append(
                {
                    **row,
                    "name": f"{artifact} through {served['engine']} (KLD: top-{served['top_k']} lumped, a lower bound)",
                    "mean_kld": served["kld_lumped_mean"],
                    "top1": served["top1_agreement"],
                    "ppl": {t: v["ppl"] for t, v in served["texts"].items()},
                }
            )
    answers = [
        {"name": artifact, **m.generation, "correct": m.generation["accuracy"], "ci": m.generation["accuracy_ci95"]}
        for artifact, m in metrics.items()
        if m.generation
    ]
    reference: dict[str, float] = {}  # the reference's own perplexity, as the evaluations measured it
    for m in metrics.values():
        reference.update({t: tm.ref_ppl for t, tm in m.texts.items() if tm.ref_ppl is not None and t not in reference})
    reference_ppl = ", ".join(f"{t} {number(v, '.3f')}" for t, v in sorted(reference.items())) or None
    base_ppl = None
    if base_metrics:
        base_ppl = ", ".join(f"{t} {number(m.ppl, '.3f')}" for t, m in sorted(base_metrics.texts.items()))
    return render(
        "model_card.md",
        front_matter=yaml.safe_dump({k: v for k, v in front.items() if v is not None}, sort_keys=False).strip(),
        name=name,
        adapter=adapter,
        base_id=base_id,
        license=license_,
        files=files,
        texts=texts,
        rows=rows,
        answers=answers,
        base_ppl=base_ppl,
        reference_ppl=reference_ppl,
        merged=merged,
        vllm=vllm or [],
        ollama_adapter_last=OLLAMA_ADAPTER_LAST,
    )


def deploy_bundle(
    out_dir,
    adapter: str,
    name: str,
    gguf_type: str,
    merged_gguf,
    merged_dir,
    base_dir,
    adapter_dirs,
    base_gguf=None,
    lora_gguf=None,
    metrics: dict | None = None,
    base_metrics=None,
    base_model_id: str | None = None,
    license_: str | None = None,
    quantized_by: str | None = None,
    splits=None,
    checkpoints=None,
    base_checkpoints=None,
) -> dict:
    """Write the bundle directory of one adapter (it appears only when complete). ``splits``: the sidecars of
    its GGUFs in llama.cpp's split format (loraforge.quantization.split), listed in the card. A LoRA-only
    revision has no merged model (``merged_gguf`` and ``merged_dir`` None): its bundle is the LoRA form alone,
    with the base's tokenizer (stop tokens, chat template)."""
    if merged_gguf is None and lora_gguf is None:
        raise PipelineError(f"{out_dir}: a deploy bundle needs the merged GGUF or the LoRA GGUF")
    for p in [merged_gguf, base_gguf, lora_gguf]:
        if p is not None and not Path(p).is_file():
            raise PipelineError(f"{p}: GGUF for the deploy bundle does not exist")
    out_dir = Path(out_dir)
    tokenizer_dir = merged_dir if merged_gguf is not None else base_dir
    stops, template = stop_tokens(tokenizer_dir), chat_template(tokenizer_dir)
    loaded = {k: Metrics.from_json(json.loads(Path(p).read_text())) for k, p in (metrics or {}).items()}
    base_m = Metrics.from_json(json.loads(Path(base_metrics).read_text())) if base_metrics else None
    files = {str(merged_gguf): f"the merged model, {gguf_type}"} if merged_gguf is not None else {}
    if lora_gguf:
        files[str(base_gguf)] = f"the base model, {gguf_type} (shared by all adapters)"
        files[str(lora_gguf)] = "the adapter as a LoRA GGUF (llama.cpp `--lora`, Ollama `ADAPTER`)"
    for sidecar in splits or []:
        s = json.loads(Path(sidecar).read_text())
        first = Path(sidecar).with_suffix("") / s["load_with"]
        files[str(first)] = (
            f"{Path(s['source']).name} in {len(s['files'])} file(s) of at most {s['max_size']} (llama.cpp loads "
            "the set from this first file; Ollama and LM Studio take the whole file)"
        )
    vllm = vllm_commands(adapter, adapter_dirs, checkpoints or [], base_checkpoints or [])
    for v in vllm:
        files[v["path"]] = v["what"]
    base_id = _base_model_id(base_dir, adapter_dirs, base_model_id)
    lic = _license(base_dir, license_)
    with atomic_dir(out_dir) as tmp:
        if merged_gguf is not None:
            (tmp / "Modelfile").write_text(
                modelfile(out_dir, merged_gguf, stops, template, title=f"{name} {adapter}, merged, {gguf_type}")
            )
        if lora_gguf:
            (tmp / "Modelfile.lora").write_text(
                modelfile(
                    out_dir,
                    base_gguf,
                    stops,
                    template,
                    adapter_gguf=lora_gguf,
                    title=f"{name} {gguf_type} with the LoRA adapter {adapter}",
                )
            )
        (tmp / "README.md").write_text(
            model_card(name, adapter, base_id, lic, quantized_by, files, loaded, base_m, merged_gguf is not None, vllm),
            encoding="utf-8",
        )
    summary = {
        "bundle": str(out_dir),
        "stops": stops,
        "template_family": template_family(template),
        "base_model": base_id,
        "license": lic,
        "forms": (["merged"] if merged_gguf is not None else [])
        + (["lora"] if lora_gguf else [])
        + [v["form"] for v in vllm],
    }
    log.info("deploy bundle %s: %s", out_dir, summary)
    return summary
