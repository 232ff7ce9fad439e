"""loraforge-registry: versions, artifacts, aliases, A/B comparisons and the dashboard of a model registry."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import PipelineError
from ..evaluation.metrics import Metrics
from ..render import number
from ..serving import TOLERANCE
from .core import Registry
from .database import DEFAULT_PATH, ENV_VAR


def _table(rows: list[dict], cols: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _artifact_rows(v) -> list[dict]:
    """One row per measured artifact and evaluation (a LoRA GGUF: one per base type it was measured on)."""
    rows = []
    for a in v.artifacts:
        for label, ev in a.measured() or [(a.variant, None)]:
            m = Metrics.from_json(ev) if ev else None
            rows.append(
                {
                    "name": v.name,
                    "version": v.version,
                    "aliases": ",".join(v.aliases),
                    "kind": a.kind,
                    "variant": label,
                    "size_mb": number(a.size / 1e6, ".1f"),
                    "mean_kld": number(m.mean_kld if m else None, ".3g"),
                    "top1": number(m.top1_agreement if m else None, ".4f"),
                    "created": v.created_at,
                }
            )
    return rows


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        default=argparse.SUPPRESS,
        help=f"registry: a SQLite file or a postgresql:// URL (default: ${ENV_VAR} or ./{DEFAULT_PATH})",
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    ap = argparse.ArgumentParser(prog="loraforge-registry", description=__doc__, parents=[common])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def cmd(name, help):
        return sub.add_parser(name, help=help, parents=[common])

    p = cmd("list", "every version's artifacts (of one name)")
    p.add_argument("name", nargs="?")
    p = cmd("show", "one version: lineage, artifacts, metrics, tags")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p = cmd("latest", "the registered file of the newest version (or the one an alias points at), verified")
    p.add_argument("name")
    p.add_argument("--quant", "--variant", dest="variant", required=True, help="artifact type, e.g. Q4_K_M")
    p.add_argument("--alias")
    p = cmd("promote", "point an alias at a version")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("alias")
    p.add_argument("--reason", default="promoted by hand")
    p = cmd("rollback", "move an alias back to where it pointed before")
    p.add_argument("name")
    p.add_argument("alias", nargs="?", default="production")
    p = cmd("history", "alias moves and refused promotions, oldest first")
    p.add_argument("name")
    p.add_argument("--alias")
    p = cmd("tag", "set a tag on a version")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("key")
    p.add_argument("value")
    p = cmd("verify", "re-hash registered files; exit 1 if any is missing or changed")
    p.add_argument("name", nargs="?")
    p = cmd("verify-served", "does a running llama-server or vLLM serve this version? exit 1 if not")
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:8080")
    p.add_argument("name")
    p.add_argument("--alias", help="the version an alias points at (default: the newest)")
    p.add_argument("--version", type=int)
    p.add_argument("--quant", "--variant", dest="variant", help="only this artifact's probe")
    p.add_argument("--model", help="the served model to ask vLLM (a --lora-modules name); default: its first")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="mean |Δ log-prob| allowed, in nats")
    p = cmd("compare", "A/B: score version B against A on texts (paired bootstrap)")
    p.add_argument("name")
    p.add_argument("a", type=int)
    p.add_argument("b", type=int)
    p.add_argument("--quant", "--variant", dest="variant", required=True)
    p.add_argument("--text", action="append", required=True, metavar="NAME=FILE")
    p.add_argument("--n-ctx", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p = cmd("dashboard", "write the self-contained HTML dashboard of all versions")
    p.add_argument("out", help="the HTML file to write")
    p = cmd("migrate", "copy the registry (--registry) into a new one, e.g. a SQLite file into PostgreSQL")
    p.add_argument("destination", help="a postgresql:// URL (or a new SQLite file)")
    return ap


def _run(a) -> tuple[object, str, int]:
    """(data for --json, text, exit code)."""
    if a.cmd == "migrate":
        from .copying import copy_registry
        from .postgres import redacted

        counts = copy_registry(getattr(a, "registry", None), a.destination)
        summary = ", ".join(f"{n} {t}" for t, n in counts.items())
        return counts, f"copied into {redacted(a.destination)}: {summary}", 0
    reg = Registry(getattr(a, "registry", None), create=False)  # only a registration creates a registry
    if a.cmd == "list":
        vs = reg.versions(a.name)
        rows = [r for v in vs for r in _artifact_rows(v)]
        cols = ["name", "version", "aliases", "kind", "variant", "size_mb", "mean_kld", "top1", "created"]
        return [v.to_dict() for v in vs], _table(rows, cols), 0
    if a.cmd == "show":
        v = reg.get(a.name, a.version)
        return v.to_dict(), json.dumps(v.to_dict(), indent=2), 0
    if a.cmd == "latest":
        v, path = reg.artifact_file(a.name, a.variant, alias=a.alias)
        return (
            {
                "name": v.name,
                "version": v.version,
                "variant": a.variant,
                "path": str(path),
                "sha256": v.artifact(a.variant).sha256,
            },
            str(path),
            0,
        )
    if a.cmd == "promote":
        v = reg.promote(a.name, a.version, a.alias, reason=a.reason)
        return v.to_dict(), f"{a.name}: {a.alias} -> v{v.version}", 0
    if a.cmd == "rollback":
        v = reg.rollback(a.name, a.alias)
        return v.to_dict(), f"{a.name}: {a.alias} rolled back to v{v.version}", 0
    if a.cmd == "history":
        data = reg.history(a.name, a.alias)
        return data, _table(data, ["at", "alias", "action", "previous_version", "version", "reason"]), 0
    if a.cmd == "tag":
        v = reg.tag(a.name, a.version, a.key, a.value)
        return v.to_dict(), f"{a.name} v{v.version}: {a.key}={a.value}", 0
    if a.cmd == "verify":
        data = reg.verify(a.name)
        bad = [r for r in data if r["status"] in ("missing", "changed")]
        text = _table(data, ["name", "version", "kind", "variant", "status", "path"])
        if bad:
            print(f"{len(bad)} registered file(s) missing or changed", file=sys.stderr)
        return data, text, 1 if bad else 0
    if a.cmd == "verify-served":
        res = reg.verify_served(a.url, a.name, a.version, a.alias, a.variant, a.model, a.tolerance)
        rows = [
            {**r, "mean_abs_logprob_diff": number(r["mean_abs_logprob_diff"], ".2g"), "ok": "yes" if r["ok"] else "no"}
            for r in res["probes"]
        ]
        text = _table(rows, ["artifact", "ok", "compared_tokens", "mean_abs_logprob_diff", "why"])
        where = f"{res['server']} at {a.url}" + (f" ({res['model']})" if res["model"] else "")
        if res["ok"]:
            return res, f"{text}\n{where} serves {a.name} v{res['version']} {res['serves']}", 0
        why = "; ".join(f"{r['artifact']}: {r['why']}" for r in res["probes"])
        print(f"{where} does not serve {a.name} v{res['version']}: {why}", file=sys.stderr)
        return res, text, 1
    if a.cmd == "compare":
        from .compare import compare_versions, table

        texts = dict(t.split("=", 1) for t in a.text)
        res = compare_versions(None, a.name, a.a, a.b, a.variant, texts, a.n_ctx, a.max_tokens, a.threads, reg=reg)
        return res, table(res), 0
    from .dashboard import render_dashboard

    render_dashboard(reg, a.out)
    return {"dashboard": a.out}, f"dashboard written to {a.out}", 0


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        data, text, rc = _run(a)
        print(json.dumps(data, indent=2) if getattr(a, "json", False) else text)
        sys.stdout.flush()
        return rc
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head`: the reader is gone, nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
