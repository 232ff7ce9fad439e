"""The workflow on a real single-node SLURM cluster started here, through profiles/slurm."""

from __future__ import annotations

import collections
import os
import shutil
from pathlib import Path

import pytest
from conftest import Workflow, user_config
from slurm_cluster import LocalSlurm, unavailable_reason

from loraforge.io.hashing import sha256_file, tree_files

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the SLURM cluster test must run in CI, but: {reason}")
        pytest.skip(reason)
    c = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield c
    finally:
        c.stop()
        assert not c.root.exists() and not os.path.lexists("/etc/slurm/slurm.conf")


def slurm_run(wf, cluster, *args, check=True):
    # the profile as users run it, but for each rule's threads capped to one CPU: SLURM refuses a job asking for
    # more CPUs than any node has, and the tiny models' jobs are mostly process start, so two at once on the test
    # node's two CPUs take less time than one with both
    cap = [
        f"{rule}=1"
        for rule in (
            "merge_adapter",
            "convert_to_gguf",
            "compute_reference",
            "evaluate_artifact",
            "evaluate_adapter_lora",
            "evaluate_base",
            "quantize_gguf",
            "convert_lora",
            "compute_imatrix",
        )
    ]
    env_args = [
        "--profile",
        "profiles/slurm",
        "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--set-threads",
        *cap,
    ]
    old = dict(os.environ)
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        return wf.run(*args, *env_args, check=check)  # --set-threads takes every word after it
    finally:
        os.environ.clear()
        os.environ.update(old)


def model_files(root, models=("alpha", "beta", "base")):
    """Hashes of every model artifact (merged weights and tokenizer, GGUFs, LoRA GGUFs) of ``models``: what must
    not depend on where it ran."""
    res = root / "results"
    files = (
        list(tree_files(res / "merged")) + sorted((res / "gguf").rglob("*.gguf")) + sorted(res.glob("lora/*/*.gguf"))
    )
    return {str(p.relative_to(res)): sha256_file(p) for p in files if p.relative_to(res).parts[1] in models}


def rule_of(job: dict) -> str:
    """The Snakemake rule of a SLURM job, from the comment the executor gives it (rule_<name>_wildcards_...)."""
    comment = job.get("Comment", "")
    assert comment.startswith("rule_"), job
    return comment[len("rule_") :].split("_wildcards")[0]


def test_workflow_on_slurm_matches_local_run(cluster, tiny_build, postgres, tmp_path):
    """The tiny workflow of the other tests, for one of its two adapters (every rule of the plan, half the jobs),
    run again from scratch through profiles/slurm, registering into PostgreSQL: with a server database the
    registry rules are SLURM jobs too, writing from the compute node."""
    local, _m, _before, _dry = tiny_build
    root = tmp_path / "slurm"
    shutil.copytree(local.root.parent / "models", root / "models")
    config = local.config()
    config["adapters"] = {"alpha": config["adapters"]["alpha"]}
    # every GGUF evaluation still runs (evaluate_adapter_lora: the merged model's GGUFs, the LoRA pairs), not the
    # two torch evaluations
    config["evaluation"]["skip"] = ["adapter", "merged"]
    url = postgres.new_database()
    config["registry"] = {"path": url, "store_dir": str(root / "store")}
    wf = Workflow(root / "wf", config)
    planned = collections.Counter(r for r, _ in wf.planned() if r != "all")
    assert planned["register_ggufs_lora"] == 1  # not a local rule with PostgreSQL
    assert planned["render_dashboard"] == 1
    before = {j["JobId"] for j in cluster.jobs()}
    proc = slurm_run(wf, cluster)
    assert "Complete log" in proc.stdout + proc.stderr
    jobs = [j for j in cluster.jobs() if j["JobId"] not in before]
    # SLURM's own record: every job of the plan ran as a SLURM job, and completed there
    assert collections.Counter(rule_of(j) for j in jobs) == planned
    assert all(j["JobState"] == "COMPLETED" and j["ExitCode"] == "0:0" for j in jobs)
    # and each job's output file, written by SLURM
    logs = list((wf.root / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in logs} >= {j["JobId"] for j in jobs}
    # the registrations, made on the node, are in the server's registry, their files in the shared store
    from loraforge.registry import Registry

    reg = Registry(url, create=False)
    (v,) = reg.versions("alpha")
    assert sorted(a.variant for a in v.artifacts if a.kind == "gguf") == ["F16", "Q8_0", "lora-F16"]
    assert {r["status"] for r in reg.verify()} <= {"ok", "not stored"}
    assert all(Path(a.store_path).is_relative_to(root / "store") for a in v.artifacts if a.store_path)
    reg.close()
    # same artifacts, bit for bit, as the local run
    assert model_files(wf.root) == model_files(local.root, ("alpha", "base"))
    assert len(model_files(wf.root)) > 8


def test_job_killed_by_slurm_fails_cleanly_and_rerun_completes(cluster, models, workflow):
    cfg = user_config(models)
    cfg["adapters"] = {"alpha": str(models["alpha"])}
    wf = workflow(cfg)
    target = "results/merged/alpha"
    before = {j["JobId"] for j in cluster.jobs()}
    # 150 MB is less than the merge check's float32 model needs: slurmstepd kills the job over its memory limit
    # (the job computes the adapter's reference first, which the check reads)
    proc = slurm_run(wf, cluster, target, "--set-resources", "merge_adapter:mem_mb=150", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    jobs = sorted((j for j in cluster.jobs() if j["JobId"] not in before), key=lambda j: int(j["JobId"]))
    assert [rule_of(j) for j in jobs] == ["merge_adapter"], jobs
    killed = jobs[-1]
    assert killed["JobState"] in ("OUT_OF_MEMORY", "FAILED", "CANCELLED"), killed
    assert killed["ExitCode"] != "0:0"
    assert f"SLURM-job '{killed['JobId']}' failed" in out
    # slurmstepd's own words in the job's output file: killed for memory, not failed for some other reason
    job_log = wf.root / ".snakemake" / "slurm_logs" / "rule_merge_adapter" / "alpha" / f"{killed['JobId']}.log"
    assert "exceeded memory limit" in job_log.read_text()
    merged = wf.root / "results" / "merged"
    assert not (merged / "alpha").exists() and not (wf.root / "results" / "checks" / "merge" / "alpha.json").exists()
    # a rerun with the declared resources completes, and leaves no temporaries of the killed job behind
    slurm_run(wf, cluster, target)
    assert (merged / "alpha" / "model.safetensors").exists()
    assert sorted(p.name for p in merged.iterdir() if p.name.startswith(".")) == []
