"""The workflow's logic without a Snakemake process (loraforge.workflow): artifact names, paths, target lists and
the cross-field config checks, from plain config dicts with the schema's defaults."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO, Workflow, make_adapter, user_config
from snakemake.utils import update_config, validate

from loraforge.errors import PipelineError
from loraforge.workflow import ConfigError, Plan, inputs_mb, paths
from loraforge.workflow.schema_values import fill_defaults

SCHEMA = str(REPO / "schemas" / "config.schema.yaml")


def config(**extra) -> dict:
    cfg = {
        "base_model": "/models/base",
        "adapters": {"alpha": "/adapters/alpha", "beta": "/adapters/beta"},
        "quantize": {"types": ["Q8_0"]},
        "evaluation": {"texts": {"general": "/texts/general.txt"}},
        **extra,
    }
    return validated(cfg)


def validated(cfg: dict) -> dict:
    """The config with the schema's defaults filled in, as rules/common.smk fills them."""
    validate(cfg, SCHEMA)
    return fill_defaults(cfg, yaml.safe_load(Path(SCHEMA).read_text()))


def plan(**extra) -> Plan:
    # the adapters do not exist: every LoRA-form question is answered as for a plain LoRA built here
    return Plan(config(**extra), produced=lambda p: p.startswith("/adapters/"))


def test_default_targets_of_two_adapters():
    p = plan()
    assert p.gguf_types == ["F16", "Q8_0"] and p.models == ["alpha", "beta", "base"]
    assert sorted(p.targets()) == sorted(
        [f"results/gguf/{a}/{a}-{t}.gguf" for a in ("alpha", "beta", "base") for t in ("F16", "Q8_0")]
        + [f"results/lora/{a}/{a}-lora-F16.gguf" for a in ("alpha", "beta")]
        + [f"results/deploy/{a}" for a in ("alpha", "beta")]
        + ["results/report/metrics.html", "results/dashboard/index.html"]
        + [f"results/registry/{a}/{t}.json" for a in ("alpha", "beta") for t in ("F16", "Q8_0", "lora-F16")]
    )
    # the adapter through PEFT is the reference (float32): not evaluated again unless asked for
    assert p.artifacts_of("alpha") == ["merged", "F16", "Q8_0", "lora-F16", "lora-Q8_0"]
    assert plan(evaluation={"texts": {"t": "/t"}, "skip": []}).artifacts_of("alpha")[0] == "adapter"
    # the dashboard waits for every registration job through one receipt of each (each writes its three together)
    assert p.dashboard_receipts() == ["results/registry/alpha/F16.json", "results/registry/beta/F16.json"]
    # rule all names only what no registration asks for (the dashboard asks for every one): the same jobs, one
    # name an adapter instead of 13 for Snakemake to resolve (tests/test_workflow.py's dry run lists every job)
    assert sorted(p.all_targets()) == sorted(
        [f"results/gguf/base/base-{t}.gguf" for t in ("F16", "Q8_0")]
        + [f"results/deploy/{a}" for a in ("alpha", "beta")]
        + ["results/report/metrics.html", "results/dashboard/index.html"]
    )
    unregistered = plan(registry={"enabled": False})
    assert unregistered.all_targets() == unregistered.targets()


def test_switches_remove_their_targets():
    p = plan(
        lora={"enabled": False},
        deploy={"enabled": False},
        registry={"enabled": False},
        evaluation={"enabled": False},
    )
    assert sorted(p.targets()) == sorted(
        f"results/gguf/{a}/{a}-{t}.gguf" for a in ("alpha", "beta") for t in ("F16", "Q8_0")
    )
    assert p.models == ["alpha", "beta"] and p.receipts() == [] and p.texts == {}


def test_skipped_forms_are_not_evaluated_reported_or_registered_with_numbers():
    p = plan(evaluation={"texts": {"general": "/t"}, "skip": ["adapter", "merged", "base", "lora-F16"]})
    assert p.artifacts_of("alpha") == ["F16", "Q8_0", "lora-Q8_0"]
    assert sorted(p.evaluations()) == sorted(
        f"results/eval/{a}/{t}.json" for a in ("alpha", "beta") for t in ("F16", "Q8_0", "lora-Q8_0")
    )
    assert p.report_inputs() == {"metrics": p.evaluations()}  # no base row
    assert "base_metrics" not in p.deploy_inputs("alpha") and p.deploy_inputs("alpha")["metrics"] == [
        f"results/eval/alpha/{t}.json" for t in ("F16", "Q8_0", "lora-Q8_0")
    ]
    # registration waits for the numbers it records, and records none of a skipped form
    assert p.register_inputs("alpha", "Q8_0")["metrics"] == "results/eval/alpha/Q8_0.json"
    # a revision's LoRA GGUF registers with its merged GGUFs, in one job (one rule for the adapters with that form)
    assert p.gguf_registered_with(lora=True) == ["alpha", "beta"] and p.gguf_registered_with(lora=False) == []
    assert p.gguf_variants(lora=True) == ["F16", "Q8_0", "lora-F16"] and "lora-F16" not in p.registered_variants()
    both = p.register_ggufs_inputs("alpha")
    assert both["metrics"] == ["results/eval/alpha/F16.json", "results/eval/alpha/Q8_0.json"]
    assert both["lora_gguf"] == "results/lora/alpha/alpha-lora-F16.gguf" and both["lora_check"].endswith(".gguf.json")
    assert both["lora_metrics"] == ["results/eval/alpha/lora-Q8_0.json"]
    # the targets are the same files: skipping evaluations removes no artifact
    assert sorted(p.targets()) == sorted(plan().targets())
    assert plan().report_inputs()["base"] == "results/base/eval.json"


def test_registry_rules_are_local_with_sqlite_and_anywhere_with_postgresql():
    assert plan().registry_local is True
    pg = plan(registry={"path": "postgresql://me@db.example/registry", "store_dir": "/shared/store"})
    assert pg.registry_local is False


def test_a_lora_only_revision_builds_no_merged_form():
    p = plan(merge={"enabled": False})
    assert p.models == ["base"] and p.evaluated == ["alpha", "beta"]
    assert sorted(p.targets()) == sorted(
        [f"results/gguf/base/base-{t}.gguf" for t in ("F16", "Q8_0")]
        + [f"results/lora/{a}/{a}-lora-F16.gguf" for a in ("alpha", "beta")]
        + [f"results/deploy/{a}" for a in ("alpha", "beta")]
        + ["results/report/metrics.html", "results/dashboard/index.html"]
        + [f"results/registry/{a}/lora-F16.json" for a in ("alpha", "beta")]
    )
    # the skip list of a merged build serves its LoRA-only revision (--config 'merge={enabled: false}')
    lora_only = plan(merge={"enabled": False}, evaluation={"texts": {"general": "/t"}, "skip": ["adapter", "merged"]})
    assert lora_only.artifacts_of("alpha") == ["lora-F16", "lora-Q8_0"]
    # the adapter through PEFT is its reference (float32): by default not evaluated again; skip: [] evaluates it,
    # and so does naming it where it must be evaluated (a gate, the answering forms)
    assert p.artifacts_of("alpha") == ["lora-F16", "lora-Q8_0"]
    both = plan(merge={"enabled": False}, evaluation={"texts": {"general": "/t"}, "skip": []})
    assert both.artifacts_of("alpha") == ["adapter", "lora-F16", "lora-Q8_0"]
    gated = plan(evaluation={"texts": {"general": "/t"}, "gates": {"adapter": {"min_top1": 0.9}}})
    assert gated.artifacts_of("alpha")[0] == "adapter" and plan().artifacts_of("alpha")[0] == "merged"
    answering = plan(evaluation={"texts": {"general": "/t"}, "prompts": "/p.jsonl", "answer_forms": ["adapter"]})
    assert answering.artifacts_of("alpha")[0] == "adapter"
    assert not any("merged" in path for path in p.evaluations())
    # the reference is the adapter through PEFT; registration and deploy name no merged model
    assert p.reference_inputs("alpha") == {"base": "/models/base", "adapters": ["/adapters/alpha"]}
    merged = plan()  # one reference either way: the merge check reads it, the GGUFs' checks read the merge check's
    assert merged.reference_inputs("alpha") == p.reference_inputs("alpha")
    # a merged build's merge job computes it first, from the evaluation texts; a LoRA-only one has compute_reference
    assert merged.reference_in_merge and not p.reference_in_merge
    assert merged.merge_check_inputs("alpha") == {"texts": list(merged.texts.values())}
    assert merged.merge_outputs() == {
        "window": "results/checks/merge/{adapter}.logprobs.safetensors",
        "reference": "results/eval/{adapter}/reference.safetensors",
    }
    unchecked = plan(merge={"check": False})  # nothing of the merge job reads it: compute_reference computes it
    assert not unchecked.reference_in_merge and unchecked.merge_outputs() == {}
    assert not plan(evaluation={"enabled": False}).reference_in_merge
    # the GGUFs' checks also score the evaluation reference's first window for their evaluations
    window = {
        "reference": "results/checks/merge/alpha.logprobs.safetensors",
        "evaluation_reference": "results/eval/alpha/reference.safetensors",
    }
    assert merged.convert_inputs("alpha") == {"model_dir": "results/merged/alpha", **window}
    assert merged.quantize_inputs("alpha", "Q8_0") == {"gguf": "results/gguf/alpha/alpha-F16.gguf", **window}
    assert plan(evaluation={"enabled": False}).check_reference("alpha") == {"reference": window["reference"]}
    assert merged.check_reference("base") == {} and merged.lora_check_inputs("alpha") == p.lora_check_inputs("alpha")
    unchecked = plan(merge={"check": False})
    assert unchecked.merge_check_inputs("alpha") == unchecked.merge_outputs() == {}
    assert unchecked.check_reference("alpha") == {}
    assert plan(evaluation={"enabled": False}).merge_check_inputs("alpha") == {}  # the merge check runs PEFT itself
    reg = p.register_inputs("alpha", "lora-F16")
    assert reg == {
        "gguf": "results/lora/alpha/alpha-lora-F16.gguf",
        "check": "results/lora/alpha/alpha-lora-F16.gguf.json",
        # its numbers: one evaluation per base type it was measured on
        "lora_metrics": ["results/eval/alpha/lora-F16.json", "results/eval/alpha/lora-Q8_0.json"],
    }
    dep = p.deploy_inputs("alpha")
    assert "merged_gguf" not in dep and "merged" not in dep
    assert dep["base_gguf"] == "results/gguf/base/base-Q8_0.gguf" and dep["lora_gguf"].endswith("alpha-lora-F16.gguf")
    # a revision's build time is its LoRA GGUF's conversion: the base's GGUFs are shared
    assert p.build_benchmarks("alpha", "lora-Q8_0") == ["benchmarks/convert_lora/alpha.tsv"]


def test_imatrix_types_compressed_models_split_sets_and_promotion():
    p = plan(
        quantize={"types": ["Q8_0", "Q4_K_M"], "imatrix": {"text": "/texts/cal.txt", "types": ["Q4_K_M", "IQ2_XS"]}},
        compress={
            "text": "/texts/cal.txt",
            "adapters": ["alpha"],
            "specs": {"drop20": {"drop_layers": 0.2, "distill": {"steps": 4}}},
        },
        deploy={"split_max_size": "50G"},
        promote={"alias": "production", "candidate_quant": "Q4_K_M", "require": {"general": "better"}},
    )
    assert p.gguf_types == ["F16", "Q8_0", "Q4_K_M", "Q4_K_M-imat", "IQ2_XS-imat"]
    assert p.row_multiple == 256  # K-quants' blocks
    assert p.models == ["alpha", "beta", "base", "alpha-drop20"] and p.evaluated == ["alpha", "beta", "alpha-drop20"]
    assert p.model_dir("alpha-drop20") == "results/distilled/alpha-drop20" and p.teacher("alpha-drop20") == "alpha"
    assert p.model_dir("base") == "/models/base" and p.model_dir("beta") == "results/merged/beta"
    assert p.artifacts_of("alpha-drop20") == ["pruned", "distilled", *p.gguf_types]
    targets = p.targets()
    assert "results/split/alpha-drop20/alpha-drop20-IQ2_XS-imat" in targets
    assert "results/registry/alpha/promotion.json" in targets and "results/registry/beta/promotion.json" in targets
    assert "results/registry/alpha-drop20/Q4_K_M-imat.json" in targets
    assert "results/registry/alpha-drop20/lora-F16.json" not in targets  # a compressed model has no LoRA form
    # a version is the model: the merge's semantics and a compressed model's spec; the rest is each artifact's
    assert p.lineage_settings("alpha-drop20")["compress"] == {"drop_layers": 0.2, "distill": {"steps": 4}}
    assert p.lineage_settings("alpha") == {"merge": {"method": "streaming"}}
    imat = {"text": "/texts/cal.txt", "n_ctx": 512, "chunks": 100}
    assert p.artifact_settings("alpha", "Q4_K_M-imat")["imatrix"] == imat
    assert "imatrix" not in p.artifact_settings("alpha", "Q4_K_M")
    assert p.artifact_settings("alpha", "merged") == {"merge": {"shard_size_mb": p.config["merge"]["shard_size_mb"]}}


def test_build_time_of_each_artifact_sums_the_jobs_behind_it():
    p = plan(
        quantize={"types": ["Q4_K_M"], "imatrix": {"text": "/texts/cal.txt", "types": ["Q4_K_M"]}},
        compress={"text": "/texts/cal.txt", "specs": {"d": {"drop_layers": 1}}},
    )
    assert p.build_benchmarks("alpha", "adapter") == []
    assert p.build_benchmarks("alpha", "merged") == ["benchmarks/merge_adapter/alpha.tsv"]
    assert p.build_benchmarks("alpha", "lora-Q4_K_M") == ["benchmarks/convert_lora/alpha.tsv"]
    assert p.build_benchmarks("alpha", "Q4_K_M-imat") == [
        "benchmarks/merge_adapter/alpha.tsv",
        "benchmarks/convert_to_gguf/alpha-F16.tsv",
        "benchmarks/quantize_gguf/alpha-Q4_K_M-imat.tsv",
        "benchmarks/compute_imatrix/alpha.tsv",
    ]
    assert p.build_benchmarks("alpha-d", "pruned") == ["benchmarks/prune_model/alpha-d.tsv"]
    assert p.build_benchmarks("alpha-d", "F16") == [
        "benchmarks/prune_model/alpha-d.tsv",
        "benchmarks/convert_to_gguf/alpha-d-F16.tsv",
    ]


def test_gguf_naming_metadata():
    p = plan(name="Llama-3.1-8B-Instruct", deploy={"quantized_by": "me"})
    assert p.gguf_metadata("alpha") == {
        "general.basename": "Llama-3.1-8B-Instruct",
        "general.name": "Llama-3.1-8B-Instruct alpha",
        "general.finetune": "alpha",
        "general.quantized_by": "me",
    }
    assert plan().gguf_metadata("base") == {"general.basename": "base", "general.name": "base"}


def test_one_template_per_artifact():
    assert paths.fill(paths.GGUF, gguf_type="F16") == "results/gguf/{model}/{model}-F16.gguf"
    assert plan().lora_gguf_of("alpha") == "results/lora/alpha/alpha-lora-F16.gguf"
    assert paths.log("merge_adapter", "{adapter}") == "logs/merge_adapter/{adapter}.log"


def test_wildcard_constraints_match_exactly_their_names():
    import re

    names = ["a", "ab", "abc", "code", "code-drop20", "a.b", *(f"a{i:04d}" for i in range(1000))]
    pattern = re.compile(paths.one_of(names))
    assert all(pattern.fullmatch(n) for n in names)
    for other in ["", "abcd", "co", "code-", "code-drop2", "a1000", "a000", "axb", "b"]:
        assert not pattern.fullmatch(other), other
    assert len(paths.one_of(names)) < len("|".join(names))  # a trie: shared prefixes written once
    assert not re.fullmatch(paths.one_of([]), "a")


def test_a_jobs_memory_counts_the_model_directories_it_reads(tmp_path):
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"x" * 3 * 2**20)
    (model / "sub" / "more.bin").write_bytes(b"x" * 2**20)
    text = tmp_path / "text.txt"
    text.write_bytes(b"y" * 2**19)
    assert inputs_mb(str(model), [str(text)]) == 4.5  # the tree, not the directory entry's 4 KB
    missing = str(tmp_path / "not-built")
    with pytest.raises(FileNotFoundError) as e:
        inputs_mb([str(text), missing])
    assert e.value.filename == missing  # what Snakemake needs to evaluate the resource again later


def test_memory_is_sized_from_real_inputs_or_deferred_until_they_exist(models, tmp_path):
    """A dry run on real tiny models: the merge's (with the adapter's reference, which it computes first) and the
    LoRA conversion's memory come from the base directory's files; the conversion's waits for the merged model it
    reads (Snakemake's <TBD>) and is evaluated when the job is ready (the full runs of tests/test_workflow.py go
    through that)."""
    wf = Workflow(tmp_path / "wf", user_config(models, adapters={"alpha": str(models["alpha"])}))
    resources, every, rule = {}, {}, None
    for line in wf.run("-n", "--forceall").stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            resources.setdefault(rule, line)
            every.setdefault(rule, []).append(line)
    base_mb = inputs_mb(str(models["base"]))
    assert base_mb > 1
    plan_ = Plan(validated(wf.config()))
    # the merge job computes the adapter's reference first: sized for both, from all its inputs
    reference_mb = inputs_mb(str(models["base"]), str(models["alpha"]), *wf.config()["evaluation"]["texts"].values())
    merge_mb = plan_.merge_mem_mb(base_mb, reference_mb)
    assert merge_mb == max(plan_.bounded_mem_mb(1500 + 3 * base_mb), plan_.bounded_mem_mb(2000 + 3 * reference_mb))
    assert f"mem_mb={merge_mb}," in resources["merge_adapter"], resources["merge_adapter"]
    assert f"mem_mb={plan_.bounded_mem_mb(2000 + 3 * base_mb)}," in resources["convert_lora"]  # the base's files
    # the base's conversion is sized; alpha's waits for its merged model
    assert sorted("mem_mb=<TBD>" in line for line in every["convert_to_gguf"]) == [False, True], every


def test_a_models_evaluations_run_in_turn_one_job_a_group():
    """Every evaluated artifact of a model is evaluated by exactly one job: its group's (every form of an adapter,
    its LoRA pairs with them where it has that form) or evaluate_artifact's; a group's n-th artifact reads what it
    would alone, each file named once."""
    evaluation = config()["evaluation"]
    p = plan(evaluation={**evaluation, "skip": [], "gates": {"Q8_0": {"max_mean_kld": 0.01}}})
    # the merged GGUFs first (at 8B the last written are still in memory), the merged model last
    assert [p.in_turn(g) for g in p.IN_TURN] == [
        ["F16", "Q8_0", "adapter", "merged"],  # an adapter without the LoRA form: none here
        ["F16", "Q8_0", "lora-F16", "lora-Q8_0", "adapter", "merged"],
        ["F16", "Q8_0"],  # a compressed model's GGUFs: none here
    ]
    assert [p.in_turn_models(g) for g in p.IN_TURN] == [[], ["alpha", "beta"], []]
    assert set(p.in_turn_all()) == set(p.artifacts_of("alpha"))
    inputs = p.in_turn_inputs("alpha", "adapter_lora")
    # what every artifact reads (the reference) is named once; what some read, once, with the numbers of those
    assert inputs == {
        "reference": "results/eval/alpha/reference.safetensors",
        "artifact_0": "results/gguf/alpha/alpha-F16.gguf",
        "check_0": "results/gguf/alpha/alpha-F16.gguf.json",
        "artifact_1": "results/gguf/alpha/alpha-Q8_0.gguf",
        "check_1": "results/gguf/alpha/alpha-Q8_0.gguf.json",
        "artifact_2": "results/gguf/base/base-F16.gguf",
        "check_2": "results/gguf/base/base-F16.gguf.json",
        "lora_2_3": "results/lora/alpha/alpha-lora-F16.gguf",
        "lora_check_2_3": "results/lora/alpha/alpha-lora-F16.gguf.json",
        "artifact_3": "results/gguf/base/base-Q8_0.gguf",
        "check_3": "results/gguf/base/base-Q8_0.gguf.json",
        "base_4": p.base,  # the adapter through PEFT: the base and the adapter stack, read by it alone
        "adapters_4": p.adapter_inputs("alpha")["adapters"],
        "artifact_5": "results/merged/alpha",
        # the merged model's numbers, from its float GGUF's conversion job (scored there beside the converter)
        "scored_5": "results/gguf/alpha/alpha-F16.gguf.json",
    }
    each = p.in_turn_each("alpha", "adapter_lora")
    assert [(e["artifact"], e["kind"]) for e in each[4:]] == [("adapter", "peft"), ("merged", "hf")]
    assert [e["gates"] for e in each] == [{}, {"max_mean_kld": 0.01}, {}, {}, {}, {}]
    # a skipped form leaves its group; a LoRA-only revision has no merged GGUFs and no merged model
    assert plan(evaluation=evaluation).in_turn("adapter_lora") == ["F16", "Q8_0", "lora-F16", "lora-Q8_0", "merged"]
    lora_only = plan(merge={"enabled": False})
    assert lora_only.in_turn("adapter_lora") in (["lora-F16", "lora-Q8_0"], ["lora-F16", "lora-Q8_0", "adapter"])
    assert lora_only.in_turn("ggufs") == []
    no_lora = plan(lora={"enabled": False})
    assert no_lora.in_turn_models("adapter") == ["alpha", "beta"] and no_lora.in_turn_models("adapter_lora") == []


def test_memory_of_a_torch_job_is_bounded_by_the_budget():
    assert plan().bounded_mem_mb(100_000) == 8000 + 1500
    assert plan().bounded_mem_mb(3000) == 3000
    assert plan(memory={"budget_mb": None}).bounded_mem_mb(100_000) == 100_000


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"quantize": {"types": ["Q8_0", "IQ2_XS"]}}, "config quantize.types: IQ2_XS needs an importance matrix"),
        ({"adapters": {"base": "/adapters/x"}}, "config adapters.base: 'base' names the base model's own GGUFs"),
        (
            {"compress": {"text": "/t", "adapters": ["gamma"], "specs": {"s": {"drop_layers": 1}}}},
            "config compress.adapters: no adapter 'gamma' (one of alpha, beta)",
        ),
        (
            {
                "adapters": {"a": "/adapters/a", "a-s": "/adapters/b"},
                "compress": {"text": "/t", "specs": {"s": {"drop_layers": 1}}},
            },
            "config compress.specs: a-s is both an adapter and a compressed model's name",
        ),
        ({"evaluation": {"texts": {}}}, "config evaluation.texts: no text named"),
        (
            {"evaluation": {"texts": {"g": "/t"}, "skip": ["Q4_K_M"]}},
            "config evaluation.skip.Q4_K_M: no such artifact (one of base, adapter, merged, pruned, distilled, F16,",
        ),
        (
            {
                "evaluation": {
                    "texts": {"g": "/t"},
                    "skip": ["adapter", "merged", "F16", "Q8_0", "lora-F16", "lora-Q8_0"],
                }
            },
            "config evaluation.skip: skips every artifact: set evaluation.enabled: false instead",
        ),
        (
            {"evaluation": {"texts": {"g": "/t"}, "skip": ["Q8_0"], "gates": {"Q8_0": {"min_top1": 0.9}}}},
            "config evaluation.gates.Q8_0: is in evaluation.skip: the gate would never run",
        ),
        (
            {
                "evaluation": {"texts": {"general": "/t"}, "skip": ["Q8_0"]},
                "promote": {"alias": "p", "candidate_quant": "Q8_0", "require": {"general": "better"}},
            },
            "config promote.candidate_quant: Q8_0 is in evaluation.skip",
        ),
        (
            {"evaluation": {"texts": {"g": "/t"}, "gates": {"Q4_K_M": {"min_top1": 0.9}}}},
            "config evaluation.gates.Q4_K_M: no such artifact",
        ),
        (
            {"promote": {"alias": "prod", "candidate_quant": "Q4_K_M", "require": {"general": "better"}}},
            "config promote.candidate_quant: Q4_K_M is not built (one of F16, Q8_0)",
        ),
        (
            {"promote": {"alias": "prod", "candidate_quant": "Q8_0", "require": {"code": "better"}}},
            "config promote.require.code: no such evaluation text (one of general)",
        ),
        (
            {
                "registry": {"enabled": False},
                "promote": {"alias": "p", "candidate_quant": "Q8_0", "require": {"general": "better"}},
            },
            "config promote: needs registry.enabled and evaluation.enabled",
        ),
        ({"deploy": {"gguf_type": "Q4_0"}}, "config deploy.gguf_type: Q4_0 is not built (one of F16, Q8_0)"),
        (
            {"registry": {"path": "postgresql://me@db.example/registry"}},
            "config registry.store_dir: a PostgreSQL registry needs a store directory that every host sees",
        ),
        (
            {"merge": {"enabled": False}, "lora": {"enabled": False}},
            "config merge.enabled: false needs lora.enabled: true",
        ),
        (
            {"merge": {"enabled": False}, "compress": {"text": "/t", "specs": {"s": {"drop_layers": 1}}}},
            "config compress: compresses the merged model: it needs merge.enabled: true",
        ),
        (
            {"merge": {"enabled": False}, "deploy": {"split_max_size": "2G"}},
            "config deploy.split_max_size: splits the merged GGUFs: it needs merge.enabled: true",
        ),
        (
            {
                "merge": {"enabled": False},
                "promote": {"alias": "p", "candidate_quant": "Q8_0", "require": {"general": "better"}},
            },
            "config promote: compares versions of the merged GGUFs",
        ),
        (
            {"evaluation": {"texts": {"general": "/t"}, "prompts": "/p.jsonl", "answer_forms": ["Q4_K_M"]}},
            "config evaluation.answer_forms.Q4_K_M: no such artifact in this build",
        ),
        (
            {
                "evaluation": {
                    "texts": {"general": "/t"},
                    "prompts": "/p.jsonl",
                    "answer_forms": ["F16"],
                    "skip": ["F16"],
                }
            },
            "config evaluation.answer_forms.F16: is in evaluation.skip",
        ),
        (
            {
                "evaluation": {
                    "texts": {"general": "/t"},
                    "prompts": "/p.jsonl",
                    "gates": {"F16": {"min_accuracy": 0.5}},
                }
            },
            "config evaluation.gates.F16.min_accuracy: F16 does not answer the prompts (evaluation.answer_forms)",
        ),
        (
            {
                "evaluation": {
                    "texts": {"general": "/t"},
                    "answer_forms": ["merged"],
                    "lm_eval": {"include_path": "/d", "tasks": ["t"]},
                }
            },
            "config evaluation.lm_eval: runs against the answering GGUFs, and evaluation.answer_forms has none",
        ),
    ],
)
def test_cross_field_config_errors_are_one_line_naming_the_key(extra, message):
    cfg = config(**{k: v for k, v in extra.items() if k != "adapters"})
    if "adapters" in extra:
        cfg["adapters"] = extra["adapters"]
    with pytest.raises(ConfigError) as e:
        Plan(cfg)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_the_shipped_forms_answer_the_prompts_against_their_adapters_answers():
    p = plan(evaluation={"texts": {"general": "/t"}, "prompts": "/p.jsonl"}, deploy={"gguf_type": "Q8_0"})
    assert p.answering == {"Q8_0", "lora-Q8_0"}  # what the deploy bundle ships, by default
    assert p.evaluation_inputs("alpha", "Q8_0")["answers"] == "results/eval/alpha/answers.json"
    assert p.evaluation_inputs("alpha", "lora-Q8_0")["answers"] == "results/eval/alpha/answers.json"
    assert "answers" not in p.evaluation_inputs("alpha", "F16")  # not asked: no generation checks
    chosen = plan(evaluation={"texts": {"general": "/t"}, "prompts": "/p.jsonl", "answer_forms": ["adapter", "F16"]})
    assert chosen.answering == {"adapter", "F16"}
    assert plan().answering == set()  # no prompts, no lm-eval: nothing answers


def test_the_shipped_configs_plan(tmp_path, llmcompressor_env):
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    demo = validated(demo)
    p = Plan(demo, produced=lambda path: path.startswith("results/"))
    assert p.evaluated == ["code", "prose"] and "Q4_K_M-imat" in p.gguf_types
    assert (
        len(p.evaluations()) == 9 + 9
    )  # the adapter through PEFT skipped by default; as the demo test counts the report's rows
    extras = {n: yaml.safe_load((REPO / "config" / f"demo-{n}.yaml").read_text()) for n in ("compress", "vllm")}
    # make demo-compress: code-drop20, pruned, distilled and its four GGUF types
    # make demo-vllm: code's four checkpoints and four multi-LoRA forms; prose's four multi-LoRA forms
    for layers, count in (("compress", 9 + 9 + 6), ("vllm", 9 + 9 + 12), ("compress vllm", 9 + 9 + 12 + 6)):
        full = copy.deepcopy(demo)
        for n in layers.split():  # as Snakemake layers --configfile files: nested keys merge
            update_config(full, copy.deepcopy(extras[n]))
        full = validated(full)
        planned = Plan(full, produced=lambda path: path.startswith("results/"))
        assert len(planned.evaluations()) == count, layers
        if "vllm" in layers:  # the chat prompts answered through vLLM's chat API too
            assert {"Q4_K_M", "AWQ-W4A16", "FP8-DYNAMIC", "vllm-lora-GPTQ-W4A16"} <= planned.answering
            assert "vllm-lora-W8A8-INT8" not in planned.answering
    example = yaml.safe_load((REPO / "config" / "example.yaml").read_text())
    assert Plan(validated(example)).adapters


HFQ = {"text": "/texts/calibration.txt", "schemes": ["GPTQ-W4A16", "AWQ-W4A16"]}


@pytest.fixture
def llmcompressor_env(monkeypatch):
    """Any existing Python passes the planning-time check that llm-compressor's environment exists."""
    import sys

    monkeypatch.setenv("LORAFORGE_LLMCOMPRESSOR_PYTHON", sys.executable)


def test_gpu_serving_checkpoints_and_the_multi_lora_form(llmcompressor_env):
    p = plan(hf_quant={**HFQ, "models": ["alpha"]})
    assert p.hfq_models() == ["alpha", "base"]
    ck = [f"results/hfq/{m}/{m}-{s}" for m in ("alpha", "base") for s in ("GPTQ-W4A16", "AWQ-W4A16")]
    assert all(c in p.targets() for c in ck) and len(p.hfq_checkpoints()) == 4
    assert p.artifacts_of("alpha")[-4:] == ["GPTQ-W4A16", "AWQ-W4A16", "vllm-lora-GPTQ-W4A16", "vllm-lora-AWQ-W4A16"]
    assert p.artifacts_of("beta")[-2:] == ["vllm-lora-GPTQ-W4A16", "vllm-lora-AWQ-W4A16"]
    assert "GPTQ-W4A16" not in p.artifacts_of("beta")
    assert p.artifact_kind("AWQ-W4A16") == "hfq" and p.artifact_kind("vllm-lora-AWQ-W4A16") == "hfq-lora"
    assert p.evaluation_inputs("beta", "vllm-lora-GPTQ-W4A16") == {
        "reference": "results/eval/beta/reference.safetensors",
        "artifact": "results/hfq/base/base-GPTQ-W4A16",
        "check": "results/hfq/base/base-GPTQ-W4A16.json",
        "base": "/models/base",
        "adapters": ["/adapters/beta"],
    }
    receipts = p.receipts()
    assert (
        "results/registry/alpha/AWQ-W4A16.json" in receipts and "results/registry/base/AWQ-W4A16.json" not in receipts
    )
    assert "results/registry/beta/vllm-lora-AWQ-W4A16.json" in receipts
    assert p.register_inputs("alpha", "GPTQ-W4A16")["checkpoint"] == "results/hfq/alpha/alpha-GPTQ-W4A16"
    assert p.build_benchmarks("alpha", "GPTQ-W4A16") == [
        "benchmarks/merge_adapter/alpha.tsv",
        "benchmarks/quantize_hf/alpha-GPTQ-W4A16.tsv",
    ]
    assert "hf_quant" not in p.lineage_settings("alpha")  # calibration tunes the checkpoints, not the model
    assert p.artifact_settings("alpha", "GPTQ-W4A16")["hf_quant"] == {
        "text": "/texts/calibration.txt",
        "samples": 16,
        "seq_len": 512,
        "group_size": None,
    }
    assert p.deploy_inputs("alpha")["checkpoints"] == ck[:2] and p.deploy_inputs("beta")["base_checkpoints"] == ck[2:]
    # without multi_lora the base is not quantized; LoRA-only builds the multi-LoRA form alone
    assert plan(hf_quant={**HFQ, "multi_lora": False}).hfq_models() == ["alpha", "beta"]
    compressed = {"text": "/texts/calibration.txt", "specs": {"d": {"drop_layers": 1}}}
    both = plan(hf_quant={**HFQ, "models": ["alpha-d"]}, compress=compressed)
    assert both.hfq_models() == ["alpha-d", "base"] and both.artifacts_of("alpha-d")[-2:] == HFQ["schemes"]
    assert "GPTQ-W4A16" not in both.artifacts_of("alpha")
    lora_only = plan(hf_quant=HFQ, merge={"enabled": False})
    assert lora_only.hfq_models() == ["base"] and "GPTQ-W4A16" not in lora_only.artifacts_of("alpha")


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"hf_quant": {**HFQ, "models": ["gamma"]}}, "config hf_quant.models: no adapter or compressed model 'gamma'"),
        (
            {"hf_quant": {**HFQ, "models": ["alpha"]}, "merge": {"enabled": False}},
            "config hf_quant.models: quantizes merged models",
        ),
        (
            {"hf_quant": {**HFQ, "multi_lora": False}, "merge": {"enabled": False}},
            "config hf_quant: with merge.enabled false only multi_lora can build",
        ),
        (
            {
                "hf_quant": HFQ,
                "evaluation": {
                    "texts": {"general": "/t"},
                    "prompts": "/p.jsonl",
                    "answer_forms": ["vllm-lora-AWQ-W4A16"],
                },
            },
            "config evaluation.answer_forms.vllm-lora-AWQ-W4A16: a vLLM form answers through vLLM itself: it needs "
            "hf_quant.vllm: true",
        ),
    ],
)
def test_hf_quant_config_errors(llmcompressor_env, extra, message):
    with pytest.raises(ConfigError) as e:
        Plan(config(**extra))
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_an_unknown_scheme_is_refused_by_the_schema():
    with pytest.raises(Exception, match="NF4"):
        config(hf_quant={**HFQ, "schemes": ["NF4"]})


def test_hf_quant_without_llm_compressors_environment_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("LORAFORGE_LLMCOMPRESSOR_PYTHON", str(tmp_path / "python"))
    with pytest.raises(ConfigError, match=r"^config hf_quant: \$LORAFORGE_LLMCOMPRESSOR_PYTHON=.*: no such Python$"):
        plan(hf_quant=HFQ)
    monkeypatch.delenv("LORAFORGE_LLMCOMPRESSOR_PYTHON")
    monkeypatch.setenv("LORAFORGE_CACHE", str(tmp_path / "cache"))  # no environment built there
    with pytest.raises(ConfigError, match=r"^config hf_quant: .*not built at .*\(make setup-hfquant does\)$"):
        plan(hf_quant=HFQ)


# --- checks that read the inputs (headers and JSON): real tiny models ---------------------------------------


def test_inputs_are_checked_and_named_by_their_key(models, tmp_path):
    cfg = config(base_model=str(models["base"]), adapters={"alpha": str(models["alpha"])})
    cfg["evaluation"]["texts"] = {"general": str(models["text"])}
    Plan(copy.deepcopy(cfg)).check_inputs()  # the good config passes
    bad = copy.deepcopy(cfg)
    bad["evaluation"]["n_ctx"] = 4096  # the tiny Llama's context is 512
    with pytest.raises(
        ConfigError, match=r"config evaluation.n_ctx: 4096 is more than the base model's context length \(512"
    ):
        Plan(bad).check_inputs()
    bad = copy.deepcopy(cfg)
    bad["base_model"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="config base_model: .*missing: base model directory does not exist"):
        Plan(bad).check_inputs()
    no_tokenizer = shutil.copytree(models["base"], tmp_path / "base-without-tokenizer")
    for f in no_tokenizer.glob("tokenizer*"):
        f.unlink()
    bad = copy.deepcopy(cfg)
    bad["base_model"] = str(no_tokenizer)
    with pytest.raises(ConfigError, match="config base_model: .*base-without-tokenizer: no tokenizer"):
        Plan(bad).check_inputs()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    bad = copy.deepcopy(cfg)
    bad["checks"]["text"] = str(empty)
    with pytest.raises(ConfigError, match="config checks.text: .*empty.txt: text file is empty"):
        Plan(bad).check_inputs()


def test_adapters_llama_cpp_cannot_load_exactly_have_no_lora_form(models, tmp_path):
    dora = make_adapter(models["base"], tmp_path / "dora", r=4, use_dora=True)
    cfg = config(base_model=str(models["base"]), adapters={"alpha": str(models["alpha"]), "dora": str(dora)})
    said = []
    p = Plan(cfg, notify=said.append)
    assert p.lora_adapters() == ["alpha"]
    assert "lora-F16" not in p.artifacts_of("dora") and "lora-F16" in p.artifacts_of("alpha")
    assert "results/lora/dora/dora-lora-F16.gguf" not in p.targets()
    assert said == [
        "adapter dora: no LoRA GGUF form (DoRA: llama.cpp's LoRA GGUFs have no magnitude vectors); "
        "its merged form builds"
    ]


def test_hf_quant_inputs_are_checked_before_any_job(models, tmp_path, llmcompressor_env):
    cfg = config(base_model=str(models["base"]), adapters={"alpha": str(models["alpha"])})
    cfg["evaluation"]["texts"] = {"general": str(models["text"])}
    calibration = tmp_path / "calibration.txt"
    calibration.write_text("def f(x):\n    return x * 2\n" * 400)
    cfg["hf_quant"] = {**HFQ, "text": str(calibration), "group_size": None, "samples": 4, "seq_len": 64, "vllm": False}
    cfg["hf_quant"]["multi_lora"] = True
    Plan(copy.deepcopy(cfg)).check_inputs()
    bad = copy.deepcopy(cfg)
    bad["hf_quant"]["group_size"] = 256
    Plan(copy.deepcopy(bad)).check_inputs()  # 256 divides the tiny Llama's 256-wide rows
    bad["hf_quant"]["group_size"] = 32
    Plan(copy.deepcopy(bad)).check_inputs()
    bad = copy.deepcopy(cfg)
    bad["hf_quant"]["samples"] = 10_000
    with pytest.raises(ConfigError, match=r"config hf_quant.text: .*calibration.txt: \d+ tokens, too short"):
        Plan(bad).check_inputs()
    bad = copy.deepcopy(cfg)
    bad["hf_quant"]["text"] = str(models["text"])
    with pytest.raises(ConfigError, match="config hf_quant.text: .* overlaps evaluation.texts.general"):
        Plan(bad).check_inputs()


def test_adapters_vllm_cannot_serve_have_no_multi_lora_form(models, tmp_path, llmcompressor_env):
    dora = make_adapter(models["base"], tmp_path / "dora", r=4, use_dora=True)
    cfg = config(base_model=str(models["base"]), adapters={"alpha": str(models["alpha"]), "dora": str(dora)})
    cfg["hf_quant"] = {**HFQ, "models": ["alpha"], "vllm": False}
    cfg["hf_quant"]["multi_lora"] = True
    said = []
    p = Plan(cfg, notify=said.append)
    assert p.vllm_lora_adapters() == ["alpha"]
    assert not any(a.startswith("vllm-lora-") for a in p.artifacts_of("dora"))
    assert "adapter dora: no vLLM multi-LoRA form (DoRA: vLLM does not support it)" in said


def test_a_lora_only_revision_refuses_what_has_no_lora_form(models, tmp_path):
    dora = make_adapter(models["base"], tmp_path / "dora", r=4, use_dora=True)
    cfg = config(
        base_model=str(models["base"]),
        adapters={"alpha": str(models["alpha"]), "dora": str(dora)},
        merge={"enabled": False},
    )
    with pytest.raises(ConfigError) as e:
        Plan(cfg)
    assert str(e.value) == (
        "config adapters.dora: no LoRA GGUF form (DoRA: llama.cpp's LoRA GGUFs have no magnitude vectors): it needs "
        "the merged form (merge.enabled: true)"
    )


def test_every_evaluated_artifact_is_of_exactly_one_form(llmcompressor_env):
    """loraforge.forms: each artifact name a plan evaluates is owned by one form, every form occurs in a config that
    builds everything (the adapter through PEFT included: evaluation.skip []), and each form's evaluation reads only
    paths the workflow builds or the config names."""
    from loraforge.forms import FORMS, Kind, form
    from loraforge.hfquant import SCHEMES

    p = plan(
        quantize={"types": ["Q8_0", "Q4_K_M"], "imatrix": {"text": "/texts/cal.txt", "types": ["Q4_K_M"]}},
        compress={"text": "/texts/cal.txt", "specs": {"d": {"drop_layers": 1, "distill": {"steps": 4}}}},
        hf_quant={**HFQ, "models": ["alpha"]},
        evaluation={"texts": {"general": "/texts/general.txt"}, "skip": []},
    )
    kinds = set()
    for model in p.evaluated:
        for art in p.artifacts_of(model):
            owners = [f for f in FORMS if f.owns(art, SCHEMES)]
            assert len(owners) == 1, f"{art}: owned by {owners}"
            kinds.add(owners[0].kind)
            assert form(p.artifact_kind(art)) is owners[0]
            for key, value in p.evaluation_inputs(model, art).items():
                for path in [value] if isinstance(value, str) else value:
                    assert path.startswith(("results/", "/models/", "/adapters/")), f"{model}/{art} {key}: {path}"
    assert kinds == set(Kind)
    assert len({f.label for f in FORMS}) == len(FORMS)
    with pytest.raises(PipelineError, match=r"unknown artifact kind 'vllm' \(one of gguf, lora, hf, peft, hfq"):
        form("vllm")


def test_hf_quant_vllm_scores_the_checkpoint_forms_and_needs_vllms_environment(
    llmcompressor_env, monkeypatch, tmp_path
):
    import sys

    monkeypatch.setenv("LORAFORGE_VLLM_PYTHON", sys.executable)
    p = plan(hf_quant={**HFQ, "vllm": True})
    assert [a for a in p.artifacts_of("alpha") if p.served_by_vllm("alpha", a)] == [
        "merged",
        "GPTQ-W4A16",
        "AWQ-W4A16",
        "vllm-lora-GPTQ-W4A16",
        "vllm-lora-AWQ-W4A16",
    ]
    # vLLM loads the merged model whole, beside what the stand-in streams
    assert p.evaluation_mem_mb("alpha", "merged", 16_000) > plan(hf_quant=HFQ).evaluation_mem_mb(
        "alpha", "merged", 16_000
    )
    assert not plan(hf_quant=HFQ).served_by_vllm("alpha", "GPTQ-W4A16")
    # only the merged models that hf_quant sends to vLLM: with the multi-LoRA form alone, the merged model is not
    multi = plan(hf_quant={**HFQ, "vllm": True, "models": ["beta"]})
    assert multi.served_by_vllm("beta", "merged") and not multi.served_by_vllm("alpha", "merged")
    assert multi.served_by_vllm("alpha", "vllm-lora-AWQ-W4A16")
    monkeypatch.setenv("LORAFORGE_VLLM_PYTHON", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match=r"config hf_quant.vllm: \$LORAFORGE_VLLM_PYTHON=.*none: no such Python"):
        plan(hf_quant={**HFQ, "vllm": True})


def test_the_merged_model_is_scored_by_its_conversion_where_it_answers_no_prompts():
    """Beside llama.cpp's converter (one Python thread) on the idle core, where the conversion reads the reference;
    not where the merged model answers the chat prompts (the evaluation loads it for them anyway), nor without the
    checks that give the conversion its reference."""
    p = plan()
    assert p.merged_scored_in_conversion
    assert p.evaluation_inputs("alpha", "merged")["scored"] == p.gguf_check("alpha", "F16")
    assert p.convert_mem_mb("alpha", 100) == 2 * p.convert_mem_mb("base", 100) + 500  # the pass's memory too
    answering = plan(evaluation={"texts": {"general": "/t"}, "prompts": "/p.jsonl", "answer_forms": ["merged"]})
    others = [
        answering,
        plan(merge={"check": False}),
        plan(convert={"check": False}),
        plan(evaluation={"texts": {"general": "/t"}, "skip": ["merged"]}),
    ]
    for q in others:
        assert not q.merged_scored_in_conversion
    assert "scored" not in answering.evaluation_inputs("alpha", "merged")
