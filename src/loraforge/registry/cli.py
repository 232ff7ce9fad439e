"""loraforge-registry: list, show, latest, promote, rollback, history, verify."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import PipelineError
from ..evaluation.metrics import Metrics
from .store import DEFAULT_PATH, ENV_VAR, Registry


def _table(rows: list[dict], cols: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _summary(v) -> dict:
    m = Metrics.from_json(v.metrics["evaluation"]) if "evaluation" in v.metrics else None
    return {
        "name": v.name,
        "version": v.version,
        "quant": v.quant_type,
        "aliases": ",".join(v.aliases),
        "mean_kld": f"{m.mean_kld:.3g}" if m and m.mean_kld is not None else None,
        "top1": f"{m.top1_agreement:.4f}" if m and m.top1_agreement is not None else None,
        "size_mb": f"{v.files['model']['size'] / 1e6:.1f}",
        "created": v.created_at,
        "path": v.path,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="loraforge-registry", description=__doc__)
    ap.add_argument("--registry", help=f"registry file (default: ${ENV_VAR} or ./{DEFAULT_PATH})")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("list", help="all versions (of one name)")
    p.add_argument("name", nargs="?")
    p = sub.add_parser("show", help="one version with lineage and metrics")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p = sub.add_parser("latest", help="the newest version, or the one an alias points at")
    p.add_argument("name")
    p.add_argument("--alias")
    p.add_argument("--quant")
    p = sub.add_parser("promote", help="point an alias at a version")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.add_argument("alias")
    p = sub.add_parser("rollback", help="move an alias back to where it pointed before")
    p.add_argument("name")
    p.add_argument("alias", nargs="?", default="production")
    p = sub.add_parser("history", help="alias moves, oldest first")
    p.add_argument("name")
    p.add_argument("--alias")
    p = sub.add_parser("verify", help="re-hash registered files; exit 1 if any is missing or changed")
    p.add_argument("name", nargs="?")
    a = ap.parse_args(argv)

    try:
        reg = Registry(a.registry)
        if a.cmd == "list":
            data = [v.to_dict() for v in reg.versions(a.name)]
            text = _table(
                [_summary(v) for v in reg.versions(a.name)],
                ["name", "version", "quant", "aliases", "mean_kld", "top1", "size_mb", "created"],
            )
        elif a.cmd in ("show", "latest", "promote", "rollback"):
            if a.cmd == "show":
                v = reg.get(a.name, a.version)
            elif a.cmd == "latest":
                v = reg.get_latest(a.name, a.alias, a.quant)
            elif a.cmd == "promote":
                v = reg.promote(a.name, a.version, a.alias)
            else:
                v = reg.rollback(a.name, a.alias)
            data = v.to_dict()
            head = {
                "promote": f"{a.name}: {getattr(a, 'alias', '')} -> v{v.version}\n",
                "rollback": f"{a.name}: {getattr(a, 'alias', '')} rolled back to v{v.version}\n",
            }.get(a.cmd, "")
            text = (
                head + json.dumps(data, indent=2)
                if a.cmd == "show"
                else head + _table([_summary(v)], ["name", "version", "quant", "aliases", "mean_kld", "top1", "path"])
            )
        elif a.cmd == "history":
            data = reg.history(a.name, a.alias)
            text = _table(data, ["at", "alias", "action", "previous_version", "version"])
        else:  # verify
            data = reg.verify(a.name)
            text = _table(data, ["name", "version", "role", "status", "path"])
        print(json.dumps(data, indent=2) if a.json else text)
        if a.cmd == "verify" and any(r["status"] != "ok" for r in data):
            bad = [r for r in data if r["status"] != "ok"]
            print(f"{len(bad)} registered file(s) missing or changed", file=sys.stderr)
            return 1
        return 0
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
