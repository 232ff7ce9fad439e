# What must be Snakemake: config validation, the plan built from it (loraforge.workflow, unit-tested apart),
# wildcard constraints and the wrappers that mark external inputs. Input functions sit beside their rules.
import functools
import os

import yaml

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

import loraforge
import loraforge.device
from loraforge.errors import PipelineError
from loraforge.io.hashing import WORKFLOW_HASH_CACHE, HashCache, tree_fingerprint
from loraforge.registry.core import STORE_ENV
from loraforge.workflow import Plan, inputs_mb, paths, size_mb
from loraforge.workflow.schema_values import coerce_strings, fill_defaults


def load_schema():
    with open(os.path.join(workflow.basedir, "schemas", "config.schema.yaml")) as f:
        return yaml.safe_load(f)


try:  # nested --config values arrive as strings ('merge={enabled: false}'): read as the schema types them
    config.update(coerce_strings(dict(config), load_schema()))
except PipelineError as e:
    raise WorkflowError(str(e)) from None
try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError as e:  # one line naming the key, not a schema dump
    err = e.__context__  # the jsonschema ValidationError
    if not hasattr(err, "absolute_path"):
        raise
    where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    raise WorkflowError(f"config {where}: {err.message}") from None
# defaults inside sections that may be null (x-default in the schema)
config.update(fill_defaults(dict(config), load_schema()))


# set by check_inputs(): from then on, which paths are produced here is fixed
ALL_RULES_KNOWN = False


def produced_here(path):
    """Whether this workflow builds ``path`` itself (the demo's inputs). Then the job that makes it checks it, and
    Snakemake tracks it like any other output."""
    return _produced_known(path) if ALL_RULES_KNOWN else _produced(path)


def _produced(path):
    return any(r.is_producer(path) for r in workflow.rules)


@functools.cache  # every adapter's jobs ask about the same base and texts
def _produced_known(path):
    return _produced(path)


try:
    plan = Plan(config, produced_here, notify=logger.info)
except PipelineError as e:
    raise WorkflowError(str(e)) from None


one_of = paths.one_of  # a wildcard constraint of exactly these names


wildcard_constraints:
    adapter=one_of(plan.adapters),
    model=one_of(plan.models),
    gguf_type=one_of(plan.gguf_types),
    artifact=one_of(plan.artifacts),


def check_inputs():
    """Bad input fails here, in a second, before any job runs (called once every rule is known)."""
    global ALL_RULES_KNOWN
    ALL_RULES_KNOWN = True
    try:
        plan.check_inputs()
    except PipelineError as e:
        raise WorkflowError(str(e)) from None


# Content fingerprints of external inputs, passed as params: Snakemake reruns a job when a param changes,
# so a touched adapter (same bytes, new mtime) reruns nothing and a changed one reruns its chain, whatever
# its size. Hashes are cached per (path, size, mtime, inode): the base is hashed once, not on every run.
_HASHES = HashCache(WORKFLOW_HASH_CACHE)


@functools.cache  # once per path and invocation, not once per job that names it
def fingerprint(path):
    if not path or produced_here(path):
        return None  # a file of this workflow: its own job's outputs trigger reruns
    digest = tree_fingerprint(path, _HASHES)
    _HASHES.save()
    return digest


def external(path):
    """An input the workflow does not build: only its content (the fingerprint param) triggers reruns."""
    return path if produced_here(path) else ancient(path)


@functools.cache  # first called once all rules exist, so a path the demo builds is not external
def external_paths():
    return plan.external_paths()


def marked(path):
    return ancient(path) if path in external_paths() else path


def with_external(inputs):
    """A job's inputs (from the plan) with the external ones marked as ``external`` marks them."""
    return {
        k: [marked(p) for p in v] if isinstance(v, list) else marked(v)
        for k, v in inputs.items()
    }


def input_fingerprints(wildcards):
    specs = plan.adapter_specs(wildcards.adapter)
    return {
        "base": fingerprint(plan.base),
        "adapters": [fingerprint(s["path"]) for s in specs],
    }


# every job's device (loraforge.device), local or on SLURM, and the registry's store
os.environ[loraforge.device.ENV] = config["device"]
if config["registry"]["store_dir"]:
    os.environ[STORE_ENV] = os.path.abspath(config["registry"]["store_dir"])
