"""The artifact graph run for real through the snakemake CLI on tiny local models: plan, incremental
rebuilds, checks and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_adapter, user_config
from safetensors.torch import load_file, save_file

from loraforge.io.hashing import blake3_file, sha256_file, tree_files, tree_fingerprint

pytestmark = pytest.mark.slow


def name_of(w: dict) -> str | None:
    """The model a job is about: an adapter, or any model with GGUFs (an adapter's, the base's, a compressed one)."""
    return w.get("adapter", w.get("model"))


def type_of(w: dict) -> str | None:
    return w.get("gguf_type", w.get("variant", w.get("artifact")))


def file_hashes(root):
    return {str(p.relative_to(root)): sha256_file(p) for p in tree_files(root)}


def all_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def built(tiny_build):
    return tiny_build


def test_dry_run_lists_every_job_and_writes_nothing(built):
    wf, _m, _before, dry = built
    rules = sorted(r for r, _ in dry if r != "all")
    per_adapter = (
        # the merge job computes the adapter's reference first
        ["merge_adapter", "convert_to_gguf", "quantize_gguf", "convert_lora", "deploy_bundle"]
        # the merged model's F16 and Q8_0, the LoRA GGUF on the base's F16 and Q8_0, the adapter through PEFT, the
        # merged model
        + ["evaluate_adapter_lora"]
        + ["register_ggufs_lora"]  # F16, Q8_0 and the LoRA GGUF in one job
    )
    base_gguf = ["convert_to_gguf", "quantize_gguf"]  # the base's own GGUFs, shared by the LoRA GGUF form
    assert rules == sorted(per_adapter * 2 + base_gguf + ["evaluate_base", "report_quality", "render_dashboard"])
    assert {w["model"] for r, w in dry if r == "quantize_gguf"} == {"alpha", "beta", "base"}
    assert not [r for r, _ in dry if r == "evaluate_artifact"]  # no other form than these in this config


def test_full_run_outputs_and_sidecars(built):
    wf, _m, _before, _ = built
    res = wf.root / "results"
    for a in ("alpha", "beta"):
        assert (res / "merged" / a / "model.safetensors").exists()
        assert (res / "merged" / a / "tokenizer.model").exists()
        assert (res / "merged" / a / "chat_template.jinja").exists()
        merge = json.loads((res / "checks" / "merge" / f"{a}.json").read_text())
        assert merge["check"]["mean_kld"] <= merge["check"]["max_mean_kld"] and merge["check"]["top1_agreement"] >= 0.98
        conv = json.loads((res / "gguf" / a / f"{a}-F16.gguf.json").read_text())
        assert conv["check"]["top1_agreement"] >= 0.98
        # one reference, PEFT's: the merge check read it and ran only the merged model, whose log-probs on those
        # tokens the conversion check read in turn (no HF model ran for it)
        assert f"results/eval/{a}/reference.safetensors" in merge["check"]["reference"], merge["check"]
        assert conv["check"]["reference_file"] == f"results/checks/merge/{a}.logprobs.safetensors"
        # the GGUFs' hashes are seeded where evaluation and registration look them up, as the files are now
        hashes = json.loads((wf.root / ".snakemake" / "loraforge" / "hashes.json").read_text())
        for t in ("F16", "Q8_0"):
            gguf = res / "gguf" / a / f"{a}-{t}.gguf"
            st, side = gguf.stat(), json.loads(Path(f"{gguf}.json").read_text())
            assert hashes[str(gguf.resolve())] == {
                "stat": [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns],
                "sha256": side["sha256"],
                "blake3": blake3_file(gguf),  # its re-verification once Snakemake has touched it
            }
        assert 15.9 < conv["bits_per_weight"] < 16.1
        q = json.loads((res / "gguf" / a / f"{a}-Q8_0.gguf.json").read_text())
        assert q["check"]["finite_logits"] and 8.0 < q["bits_per_weight"] < 9.0
        assert (res / "gguf" / a / f"{a}-Q8_0.gguf").read_bytes()[:4] == b"GGUF"
    # no temporary leftovers anywhere
    leftovers = [f for f in all_files(res) if f.endswith(".tmp") or "/." in f]
    assert [f for f in leftovers if not f.endswith("/.snakemake_timestamp")] == []


def test_the_merged_model_is_scored_beside_its_conversion_as_its_evaluation_would_score_it(built):
    """Its conversion job scored it on the core llama.cpp's converter leaves idle; the evaluation took those
    numbers, which are the ones a pass of its own gives."""
    from loraforge.evaluation import evaluate

    wf, *_ = built
    r = wf.root / "results"
    merged = json.loads((r / "eval" / "alpha" / "merged.json").read_text())
    assert merged["scored_beside"] == "convert_to_gguf (results/gguf/alpha/alpha-F16.gguf.json)"
    assert merged["label"] == "alpha/merged" and merged["kind"] == "hf" and merged["size_bytes"] > 0
    again = evaluate("hf", r / "merged" / "alpha", r / "eval" / "alpha" / "reference.safetensors")
    assert set(merged["texts"]) == set(again.texts)
    for name, t in again.texts.items():
        assert merged["texts"][name]["scored_tokens"] == t.scored_tokens
        assert merged["texts"][name]["ppl"] == pytest.approx(t.ppl, rel=1e-5), name
    assert merged["mean_kld"] == pytest.approx(again.mean_kld, rel=1e-3, abs=1e-8)
    assert "scored_beside" not in json.loads((r / "eval" / "alpha" / "F16.json").read_text())


def test_base_model_is_never_written(built):
    _wf, m, before, _ = built
    assert file_hashes(m["base"]) == before


def test_every_gguf_is_registered_under_its_revision_with_lineage_and_metrics(built):
    from loraforge.registry import Registry

    wf, m, *_ = built
    reg = Registry(wf.root / "registry.sqlite")
    (v,) = reg.versions("alpha")  # one adapter revision: one version, its artifacts beneath it
    assert sorted((a.kind, a.variant) for a in v.artifacts) == [
        ("gguf", "F16"),
        ("gguf", "Q8_0"),
        ("gguf", "lora-F16"),
        ("merged", "hf"),
    ]
    q8 = v.artifact("Q8_0")
    assert q8.source_path == str((wf.root / "results" / "gguf" / "alpha" / "alpha-Q8_0.gguf").resolve())
    assert Path(q8.store_path).read_bytes() == Path(q8.source_path).read_bytes()
    assert v.lineage["base_model"]["path"] == str(m["base"].resolve())
    assert v.lineage["base_model"]["sha256"] == tree_fingerprint(m["base"])
    assert v.lineage["adapters"] == [
        {"path": str(m["alpha"].resolve()), "weight": 1.0, "sha256": tree_fingerprint(m["alpha"])}
    ]
    assert {"torch", "transformers", "peft", "llama-cpp-python"} <= set(v.lineage["tools"])
    assert v.lineage["settings"] == {"merge": {"method": "streaming"}}  # what defines the model
    assert q8.settings["convert"] == {"outtype": "f16", "name": None, "quantized_by": None}  # the artifact's own
    # the LoRA GGUF carries its numbers: one evaluation per base type it was measured on
    lora = v.artifact("lora-F16")
    assert [label for label, _ in lora.measured()] == ["lora-F16 on F16", "lora-F16 on Q8_0"]
    for _label, lev in lora.measured():
        assert 0 < lev["mean_kld"] < 0.1 and lev["lora_sha256"] == lora.sha256
    ev = q8.metrics["evaluation"]
    assert 0 < ev["mean_kld"] < 0.05 and q8.metrics["check"]["finite_logits"] is True
    assert set(ev["texts"]) == {"general"} and ev["artifact_sha256"] == q8.sha256


def test_verify_served_tells_which_version_a_llama_server_serves(built):
    """Each GGUF's evaluation recorded its probe through llama-server; `loraforge-registry verify-served` sends it to
    a running llama-server: alpha's Q8_0 served is alpha (and names the artifact), not beta; the base GGUF with
    alpha's LoRA GGUF (`--lora`) is alpha's LoRA form."""
    from loraforge.llamacpp.server import llama_server

    wf, *_ = built
    reg, res = wf.root / "registry.sqlite", wf.root / "results"

    def verify(url, *args):
        exe = Path(sys.executable).with_name("loraforge-registry")
        r = subprocess.run([exe, "--registry", reg, "verify-served", url, *args], capture_output=True, text=True)
        return r.returncode, r.stdout, r.stderr

    ev = json.loads((res / "eval" / "alpha" / "Q8_0.json").read_text())
    assert ev["probe"]["engine"].startswith("llama-server (llama-cpp-python ")
    assert len(ev["probe"]["prompt"]) == 32 and len(ev["probe"]["tokens"]) == 16
    with llama_server(res / "gguf" / "alpha" / "alpha-Q8_0.gguf", n_ctx=256) as server:
        code, out, err = verify(server.url, "alpha", "--quant", "Q8_0")
        assert code == 0 and f"llama-server at {server.url} serves alpha v1 Q8_0" in out, out + err
        code, out, err = verify(server.url, "beta")
        assert code == 1 and err.count("\n") == 1 and "does not serve beta v1: " in err, err
        assert "beta v1" in err and "Q8_0: " in err  # each of beta's llama-server probes says why
    lora = res / "lora" / "alpha" / "alpha-lora-F16.gguf"
    with llama_server(res / "gguf" / "base" / "base-F16.gguf", loras=[lora], n_ctx=256) as server:
        code, out, err = verify(server.url, "alpha")
        assert code == 0 and "serves alpha v1 lora-F16 on F16" in out, out + err


def test_registering_again_adds_no_version(built_copy):
    from loraforge.registry import Registry

    wf, _m = built_copy
    shutil.rmtree(wf.root / "results" / "registry")  # receipts gone: every registration runs again
    wf.run()
    (v,) = Registry(wf.root / "registry.sqlite").versions("alpha")
    assert len(v.artifacts) == 4  # F16, Q8_0, the LoRA GGUF, the merged dir


def test_second_run_does_nothing(built):
    wf, *_ = built
    assert wf.planned() == []


def test_touching_an_adapter_reruns_nothing(built_copy):
    wf, m = built_copy
    weights = m["alpha"] / "adapter_model.safetensors"
    assert weights.stat().st_size > 1_000_000  # above Snakemake's --max-checksum-file-size default
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns + 10**10, st.st_mtime_ns + 10**10))
    os.utime(m["base"] / "model.safetensors", ns=(st.st_atime_ns + 10**10, st.st_mtime_ns + 10**10))
    assert wf.planned() == []


def test_adding_a_quant_type_builds_only_the_new_files(built_copy):
    wf, m = built_copy
    cfg = wf.config()
    cfg["quantize"]["types"] = ["Q8_0", "Q4_K_M"]
    wf.write_config(cfg)
    jobs = [(r, name_of(w), type_of(w)) for r, w in wf.planned()]
    # the new type of each merged model and of the base (for the LoRA form), evaluated both ways; the bundles and
    # the report list it. Every form of an adapter is evaluated in one job: all again, the new type with them
    assert sorted(j for j in jobs if j[0] != "all") == [
        ("deploy_bundle", "alpha", None),
        ("deploy_bundle", "beta", None),
        ("evaluate_adapter_lora", "alpha", None),  # the LoRA GGUF on every base type again too
        ("evaluate_adapter_lora", "beta", None),
        ("quantize_gguf", "alpha", "Q4_K_M"),
        ("quantize_gguf", "base", "Q4_K_M"),
        ("quantize_gguf", "beta", "Q4_K_M"),
        # the new GGUF beside its siblings (registered again as they are), and the LoRA GGUF, which takes its
        # numbers on the new base type
        ("register_ggufs_lora", "alpha", None),
        ("register_ggufs_lora", "beta", None),
        ("render_dashboard", None, None),
        ("report_quality", None, None),
    ]


def test_adding_a_form_adds_artifacts_to_the_version_not_a_version(built_copy):
    """A new quant type in the config of registered adapters: their versions take the new artifacts (a version is
    the model, not the list of forms built from it); the dashboard shows the LoRA GGUF's numbers per base type."""
    from loraforge.registry import Registry

    wf, _m = built_copy
    cfg = wf.config()
    cfg["quantize"]["types"] = ["Q8_0", "Q4_0"]
    wf.write_config(cfg)
    wf.run()
    reg = Registry(wf.root / "registry.sqlite")
    (v,) = reg.versions("alpha")
    assert sorted(a.variant for a in v.artifacts) == ["F16", "Q4_0", "Q8_0", "hf", "lora-F16"]
    assert v.artifact("Q4_0").metrics["evaluation"]["artifact_sha256"] == v.artifact("Q4_0").sha256
    # the LoRA GGUF (unchanged bytes) is registered once, with its numbers on the new base type added
    lora_rows = {label for label, _ in v.artifact("lora-F16").measured()}
    assert lora_rows == {"lora-F16 on F16", "lora-F16 on Q8_0", "lora-F16 on Q4_0"}
    page = (wf.root / "results" / "dashboard" / "index.html").read_text()
    row = page[page.index("lora-F16 on Q8_0") :][:600]
    kld = dict(v.artifact("lora-F16").measured())["lora-F16 on Q8_0"]["mean_kld"]
    assert f"{kld:.2e}" in row, row  # the dashboard's format for KLD


def test_changing_one_adapter_rebuilds_only_its_chain(built_copy):
    wf, m = built_copy
    beta_before = file_hashes(wf.root / "results" / "gguf" / "beta")
    weights = m["alpha"] / "adapter_model.safetensors"
    t = load_file(weights)
    key = next(k for k in t if "lora_B" in k)
    t[key] = t[key] + 0.01
    save_file(t, weights, metadata={"format": "pt"})
    jobs = [(r, name_of(w)) for r, w in wf.planned() if r != "all"]
    # alpha's chain, both forms (its LoRA GGUF too; the base's GGUFs stay), its bundle, the report and dashboard
    assert sorted(jobs) == [
        ("convert_lora", "alpha"),
        ("convert_to_gguf", "alpha"),
        ("deploy_bundle", "alpha"),
        ("evaluate_adapter_lora", "alpha"),
        ("merge_adapter", "alpha"),
        ("quantize_gguf", "alpha"),
        ("register_ggufs_lora", "alpha"),
        ("render_dashboard", None),
        ("report_quality", None),
    ]
    wf.run()
    assert file_hashes(wf.root / "results" / "gguf" / "beta") == beta_before
    assert wf.planned() == []
    from loraforge.registry import Registry

    reg = Registry(wf.root / "registry.sqlite")
    assert [v.version for v in reg.versions("alpha")] == [1, 2] and len(reg.versions("beta")) == 1


def test_failed_check_leaves_no_output(built_copy):
    """A conversion check that cannot pass (F16 never matches to 1e-9): the rule fails, its log names the check,
    and neither the GGUF nor its sidecar is left (the earlier build's are removed, no temporary stays)."""
    wf, _m = built_copy
    cfg = wf.config()
    cfg["convert"] = {"max_abs_logit_diff": 1e-9}
    wf.write_config(cfg)
    proc = wf.run("results/gguf/alpha/alpha-F16.gguf", check=False)
    assert proc.returncode != 0
    log = (wf.root / "logs" / "convert_to_gguf" / "alpha-F16.log").read_text()
    assert "llama.cpp logits disagree with the HF model" in log
    gguf_dir = wf.root / "results" / "gguf" / "alpha"
    assert [f for f in all_files(gguf_dir) if "F16" in f or f.endswith(".tmp") or "/." in f] == []
    assert (wf.root / "results" / "merged" / "alpha" / "model.safetensors").exists()  # upstream kept


def test_bf16_base_to_f16_is_logged(workflow, tmp_path):
    from conftest import make_llama

    base = make_llama(tmp_path / "bf16base", dtype=torch.bfloat16)
    ad = make_adapter(base, tmp_path / "ad", r=8)
    wf = workflow(
        {
            "base_model": str(base),
            "adapters": {"a": str(ad)},
            "quantize": {"types": ["Q8_0"], "threads": 1},
            "threads": 1,
            "evaluation": {"enabled": False},
        }
    )
    wf.run("results/gguf/a/a-F16.gguf")
    log = (wf.root / "logs" / "convert_to_gguf" / "a-F16.log").read_text()
    assert "bfloat16 weights; writing F16 changes their precision" in log
    merge = json.loads((wf.root / "results" / "checks" / "merge" / "a.json").read_text())
    assert merge["base_dtype"] == "BF16"
    merged = load_file(wf.root / "results" / "merged" / "a" / "model.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in merged.values())


def test_a_merge_without_its_check_leaves_the_reference_to_its_own_job(workflow, models):
    """With merge.check off nothing of the merge reads the adapter's reference, so the merge job does not compute it
    (it does where the check is on: tests above) and compute_reference does, for the evaluations."""
    wf = workflow(user_config(models, adapters={"alpha": str(models["alpha"])}, merge={"check": False}))
    planned = {r for r, w in wf.planned("results/eval/alpha/reference.safetensors")}
    assert planned == {"compute_reference"}
    wf.run("results/merged/alpha", "results/eval/alpha/reference.safetensors")
    merge = json.loads((wf.root / "results" / "checks" / "merge" / "alpha.json").read_text())
    assert "check" not in merge and (wf.root / "results" / "merged" / "alpha" / "config.json").is_file()
    assert (wf.root / "logs" / "compute_reference" / "alpha.log").is_file()


def test_failing_quality_gate_names_artifact_metric_threshold_value(built_copy):
    wf, _m = built_copy
    cfg = wf.config()
    cfg["evaluation"]["gates"] = {"Q8_0": {"max_mean_kld": 1e-12}}
    wf.write_config(cfg)
    proc = wf.run("results/eval/alpha/Q8_0.json", check=False)
    assert proc.returncode != 0
    log = (wf.root / "logs" / "evaluate_adapter_lora" / "alpha.log").read_text()
    line = next(ln for ln in log.splitlines() if "quality gate failed" in ln)
    assert "alpha/Q8_0" in line and "mean_kld = " in line and "max_mean_kld = 1e-12" in line
    # every form of an adapter is evaluated in one job (its GGUFs registered together): none of its numbers stays
    # (the F16's, measured first in the same job, neither: the log has them), and the job runs again for any one
    assert "evaluation of alpha/F16" in log
    for artifact in ("Q8_0", "F16", "lora-Q8_0", "merged"):
        assert not (wf.root / "results" / "eval" / "alpha" / f"{artifact}.json").exists()
    assert [r for r, _ in wf.planned("results/eval/alpha/lora-Q8_0.json")] == ["evaluate_adapter_lora"]


def test_configfile_replaces_the_demo_config(workflow, models, tmp_path):
    import yaml

    wf = workflow(None)  # the demo stays the default config
    mine = tmp_path / "my.yaml"
    mine.write_text(yaml.safe_dump(user_config(models)))
    jobs = wf.planned("--configfile", str(mine))
    assert {w["adapter"] for r, w in jobs if r == "merge_adapter"} == {"alpha", "beta"}
    assert not [r for r, _ in jobs if r.startswith(("build_demo", "train_demo", "write_demo"))]


def test_a_gguf_changed_after_its_build_is_refused_not_registered(built_copy):
    """4 bytes overwritten in place: Snakemake reruns what depends on the file, not the file itself; the
    evaluation and the registration refuse the bytes its build sidecar did not record."""
    from loraforge.registry import Registry

    wf, _m = built_copy
    gguf = wf.root / "results" / "gguf" / "alpha" / "alpha-Q8_0.gguf"
    with open(gguf, "r+b") as f:
        f.seek(gguf.stat().st_size - 64)
        f.write(b"\x01\x02\x03\x04")
    proc = wf.run(check=False)
    assert proc.returncode != 0
    log = (wf.root / "logs" / "evaluate_adapter_lora" / "alpha.log").read_text()
    assert f"{gguf.relative_to(wf.root)}: content changed since it was built" in log
    reg = Registry(wf.root / "registry.sqlite")
    assert [len(v.artifacts) for v in reg.versions("alpha")] == [4]  # F16, Q8_0, LoRA, merged: nothing new
    # and the registered bytes are still the ones that were built and measured
    _mv, path = reg.artifact_file("alpha", "Q8_0")
    assert path.read_bytes() != gguf.read_bytes()


def test_artifacts_are_readable_by_others(built):
    import stat

    wf, *_ = built
    res = wf.root / "results"
    for p in [res / "gguf" / "alpha" / "alpha-Q8_0.gguf", res / "merged" / "alpha" / "model.safetensors"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    assert stat.S_IMODE((res / "merged" / "alpha").stat().st_mode) == 0o755


def test_split_sets_build_beside_the_ggufs_and_the_card_lists_them(built_copy):
    """Issue 12: with deploy.split_max_size every GGUF is also written as llama.cpp's split set; only those jobs
    and the bundles that list them run."""
    wf, _m = built_copy
    cfg = wf.config()
    cfg["deploy"] = {"split_max_size": "20M"}
    wf.write_config(cfg)
    jobs = sorted((r, name_of(w), w.get("gguf_type")) for r, w in wf.planned() if r != "all")
    assert jobs == sorted(
        [("split_gguf", a, t) for a in ("alpha", "beta") for t in ("F16", "Q8_0")]
        + [("deploy_bundle", a, None) for a in ("alpha", "beta")]
    )
    wf.run()
    res = wf.root / "results" / "split" / "alpha"
    f16 = json.loads((res / "alpha-F16.json").read_text())  # 35 MB: two files of at most 20 MB
    assert [f["name"] for f in f16["files"]] == ["alpha-F16-00001-of-00002.gguf", "alpha-F16-00002-of-00002.gguf"]
    assert f16["check"]["logits"] == "identical to the whole file's"
    q8 = json.loads((res / "alpha-Q8_0.json").read_text())  # 19 MB: kept whole
    assert [f["name"] for f in q8["files"]] == ["alpha-Q8_0.gguf"]
    assert (res / "alpha-Q8_0" / "alpha-Q8_0.gguf").stat().st_ino == (
        wf.root / "results" / "gguf" / "alpha" / "alpha-Q8_0.gguf"
    ).stat().st_ino  # a hard link: no second copy on disk
    card = (wf.root / "results" / "deploy" / "alpha" / "README.md").read_text()
    assert "results/split/alpha/alpha-F16/alpha-F16-00001-of-00002.gguf" in card


def test_a_lora_only_revision_builds_checks_evaluates_and_registers_no_merged_form(workflow, models, tmp_path):
    """merge.enabled: false: each adapter's LoRA GGUF beside the base's GGUFs (built once, shared), checked and
    evaluated against the adapter through PEFT, registered and bundled; nothing merged. A new revision of one
    adapter rebuilds only its LoRA chain."""
    m = dict(models)
    for a in ("alpha", "beta"):
        m[a] = shutil.copytree(models[a], tmp_path / "adapters" / a)
    wf = workflow(user_config(m, merge={"enabled": False}))
    wf.run()
    r = wf.root / "results"
    assert not (r / "merged").exists() and sorted(p.name for p in (r / "gguf").iterdir()) == ["base"]
    assert not list((wf.root / "logs").glob("merge_adapter/*")) and not (wf.root / "logs" / "merge_adapter").exists()
    for a in ("alpha", "beta"):
        side = json.loads((r / "lora" / a / f"{a}-lora-F16.gguf.json").read_text())
        assert side["check"]["reference"] == "the adapter applied through PEFT, unmerged, float32"
        assert side["check"]["reference_file"] == f"results/eval/{a}/reference.safetensors"  # PEFT ran once
        assert side["check"]["mean_kld"] < 1e-3
        # the adapter through PEFT is the reference itself: not evaluated again unless evaluation.skip says so
        assert sorted(p.stem for p in (r / "eval" / a).glob("*.json")) == ["lora-F16", "lora-Q8_0"]
        ref = json.loads((r / "eval" / a / "lora-Q8_0.json").read_text())
        assert 0 < ref["mean_kld"] < 0.05 and ref["lora"].endswith(f"{a}-lora-F16.gguf")
        bundle = r / "deploy" / a
        assert sorted(p.name for p in bundle.iterdir() if not p.name.startswith(".")) == ["Modelfile.lora", "README.md"]
        assert "LoRA-only" in (bundle / "README.md").read_text()
    from loraforge.registry import Registry

    reg = Registry(wf.root / "registry.sqlite")
    (v,) = reg.versions("alpha")
    assert [(a.kind, a.variant) for a in v.artifacts] == [("gguf", "lora-F16")]
    assert v.lineage["adapters"][0]["sha256"] == tree_fingerprint(m["alpha"])
    reg.close()
    # a retrained alpha: its LoRA chain only, no base GGUF and nothing of beta
    weights = m["alpha"] / "adapter_model.safetensors"
    t = load_file(weights)
    key = next(k for k in t if "lora_B" in k)
    t[key] = t[key] + 0.01
    save_file(t, weights, metadata={"format": "pt"})
    jobs = sorted((r_, name_of(w)) for r_, w in wf.planned() if r_ != "all")
    assert jobs == [
        ("compute_reference", "alpha"),
        ("convert_lora", "alpha"),
        ("deploy_bundle", "alpha"),
        ("evaluate_adapter_lora", "alpha"),  # its LoRA GGUF's pairs: no merged form
        ("register_model", "alpha"),
        ("render_dashboard", None),
        ("report_quality", None),
    ]
    wf.run()
    reg = Registry(wf.root / "registry.sqlite")
    assert [v.version for v in reg.versions("alpha")] == [1, 2] and len(reg.versions("beta")) == 1
    reg.close()


def test_gpu_serving_checkpoints_are_built_checked_evaluated_registered_and_deployed(workflow, models, tmp_path):
    """hf_quant through the workflow: a GPTQ checkpoint of alpha's merged model, and the base's for vLLM's multi-LoRA
    form; each loads back with the log-probs its sidecar recorded, is evaluated against the float32 reference,
    registered whole and named in the deploy card with its vllm serve line. One scheme: the workflow's rules take
    any scheme alike, and each scheme's own build is tests/test_hfquant.py's (GPTQ and AWQ of the same base there;
    the demo's GPU forms, of SmolLM2, build with `make demo-vllm`)."""
    from loraforge.hfquant import probe_logprobs
    from loraforge.models.hf import load_checkpoint

    calib = tmp_path / "calibration.txt"  # other text than the evaluation's (an overlap is refused)
    calib.write_text(Path(json.__file__).read_text(encoding="utf-8"), encoding="utf-8")
    schemes = ["GPTQ-W4A16"]
    hfq = {"text": str(calib), "schemes": schemes, "models": ["alpha"], "samples": 2, "seq_len": 64}
    cfg = user_config(models, hf_quant=hfq, lora={"enabled": False})
    cfg["evaluation"]["skip"] = ["adapter", "merged", "base"]  # the torch forms are test_workflow's other tests'
    wf = workflow(cfg)
    wf.run()
    res = wf.root / "results"
    sidecars = sorted((res / "hfq").glob("*/*.json"))
    assert [p.name for p in sidecars] == [f"{m}-{s}.json" for m in ("alpha", "base") for s in sorted(schemes)]
    for sidecar in sidecars:
        s = json.loads(sidecar.read_text())
        ck = sidecar.with_suffix("")
        assert s["format"] == "pack-quantized" and s["sha256"] == tree_fingerprint(ck)
        got = probe_logprobs(load_checkpoint(ck), s["check"]["probe_tokens"])
        assert max(abs(a - b) for a, b in zip(got, s["check"]["probe_logprobs"], strict=True)) < 1e-4, ck
    for scheme in schemes:
        m = json.loads((res / "eval" / "alpha" / f"{scheme}.json").read_text())
        assert m["kind"] == "hfq" and 0 < m["mean_kld"] < 1.0 and 4 < m["bits_per_weight"] < 32
        for a in ("alpha", "beta"):
            pair = json.loads((res / "eval" / a / f"vllm-lora-{scheme}.json").read_text())
            assert pair["kind"] == "hfq-lora" and 0 < pair["mean_kld"] < 1.0
        receipt = json.loads((res / "registry" / "alpha" / f"{scheme}.json").read_text())
        assert receipt["kind"] == "hf-quant" and receipt["stored_as"]
        assert json.loads((res / "registry" / "beta" / f"vllm-lora-{scheme}.json").read_text())["kind"] == "vllm-lora"
    dashboard = (res / "dashboard" / "index.html").read_text()
    assert all(v in dashboard for v in ("GPTQ-W4A16", "vllm-lora-GPTQ-W4A16"))
    card = (res / "deploy" / "alpha" / "README.md").read_text()
    assert "vllm serve results/hfq/alpha/alpha-GPTQ-W4A16" in card
    assert f"--enable-lora --max-lora-rank 64 --lora-modules alpha={models['alpha']}" in card


def test_a_compressed_model_is_pruned_distilled_and_shipped_like_a_merged_one(workflow, models, tmp_path):
    """compress through the workflow: alpha's merged model without one of its two layers, distilled from it, both
    scored against alpha's float32 reference; its GGUF converted, quantized, evaluated and registered under its own
    name. (Whether distillation recovers is tests/test_compression.py's subject; the demo's compressed SmolLM2
    builds with `make demo-compress`.)"""
    from gguf import GGUFReader

    from loraforge.registry import Registry

    calib = tmp_path / "calibration.txt"  # other text than the evaluation's (an overlap is refused)
    calib.write_text(Path(json.__file__).read_text(encoding="utf-8"), encoding="utf-8")
    spec = {"drop_layers": 1, "distill": {"steps": 3, "batch": 2}}
    compress = {"text": str(calib), "adapters": ["alpha"], "n_ctx": 64, "specs": {"d1": spec}}
    cfg = user_config(models, adapters={"alpha": str(models["alpha"])}, compress=compress, lora={"enabled": False})
    cfg["evaluation"]["skip"] = ["adapter", "merged", "base"]  # the other tests' subject
    wf = workflow(cfg)
    wf.run()
    res = wf.root / "results"
    scores = json.loads((res / "pruned" / "alpha-d1.json").read_text())
    assert scores["layers"] == [2, 1] and len(scores["dropped"]) == 1
    curve = json.loads((res / "distilled" / "alpha-d1.json").read_text())
    assert len(curve["loss"]) == 3
    pruned, distilled = (load_file(res / f / "alpha-d1" / "model.safetensors") for f in ("pruned", "distilled"))
    assert pruned.keys() == distilled.keys() and not all(torch.equal(pruned[k], distilled[k]) for k in pruned)
    forms = ("pruned", "distilled", "F16", "Q8_0")
    scored = {form: json.loads((res / "eval" / "alpha-d1" / f"{form}.json").read_text()) for form in forms}
    assert all(m["mean_kld"] > 0 for m in scored.values())  # against alpha's reference, on its tokens
    assert {m["scored_tokens"] for m in scored.values()} == {scored["Q8_0"]["scored_tokens"]} != {0}
    q8 = res / "gguf" / "alpha-d1" / "alpha-d1-Q8_0.gguf"
    assert GGUFReader(q8).fields["llama.block_count"].contents() == 1
    receipt = json.loads((res / "registry" / "alpha-d1" / "Q8_0.json").read_text())
    assert receipt["name"] == "alpha-d1" and receipt["sha256"] == sha256_file(q8)
    reg = Registry(wf.root / "registry.sqlite")
    assert [v.version for v in reg.versions("alpha-d1")] == [1]
    reg.close()
