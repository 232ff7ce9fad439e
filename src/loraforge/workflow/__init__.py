"""The workflow's own logic, apart from Snakemake: a config's artifact graph (``Plan``) and the path of every
artifact (``paths``). ``rules/common.smk`` builds one Plan; the rules and ``rule all`` ask it."""

from . import paths
from .jobs import inputs_mb
from .plan import ConfigError, Plan, size_mb

__all__ = ["ConfigError", "Plan", "inputs_mb", "paths", "size_mb"]
