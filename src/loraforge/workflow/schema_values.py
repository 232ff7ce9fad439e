"""A config's values as the schema (schemas/config.schema.yaml) types them and fills them in.

Defaults live in the schema. Snakemake's validation fills a property's ``default``, but inside a section that may be
null (``quantize.imatrix``, ``hf_quant``) it would fill them into null; so there the schema gives ``x-default``, and
:func:`fill_defaults` fills those into a section the config has.


``snakemake --config 'merge={enabled: false}'`` hands nested values over as strings (Snakemake parses them with
YAML's BaseLoader): ``{"merge": {"enabled": "false"}}``, which the schema refuses as "not of type 'boolean'".
:func:`coerce_strings` walks the config beside the schema and reads each string where the schema allows no string
as the boolean, integer, number or null it stands for; a string it cannot read is refused with one line naming the
key and the spellings it accepts. Values from a config file are already typed and pass through unchanged.
"""

from __future__ import annotations

from .config_checks import ConfigError

TRUE = {"true", "yes", "on", "1"}
FALSE = {"false", "no", "off", "0"}
NULL = {"null", "~", "none", ""}


def _types(schema: dict) -> set[str]:
    t = schema.get("type")
    return {t} if isinstance(t, str) else set(t or ())


def _resolve(schema: dict, root: dict) -> dict:
    ref = schema.get("$ref")
    if ref and ref.startswith("#/"):
        node = root
        for part in ref[2:].split("/"):
            node = node[part]
        return node
    return schema


def _read(value: str, types: set[str], key: str):
    """A string as one of ``types`` (none of them string)."""
    low = value.strip().lower()
    if "null" in types and low in NULL:
        return None
    if "boolean" in types:
        if low in TRUE:
            return True
        if low in FALSE:
            return False
    if "integer" in types:
        try:
            return int(low)
        except ValueError:
            pass
    if "number" in types:
        try:
            return float(low)
        except ValueError:
            pass
    spellings = []
    if "boolean" in types:
        spellings.append("true or false (also yes/no, on/off, 1/0)")
    if "integer" in types:
        spellings.append("an integer")
    if "number" in types:
        spellings.append("a number")
    if "null" in types:
        spellings.append("null")
    raise ConfigError(key, f"{value!r} is not {' or '.join(spellings) or 'a value of this key'}")


def coerce_strings(value, schema: dict, root: dict | None = None, key: str = ""):
    """``value`` with every string read as the type its schema gives where that type is not a string."""
    root = root if root is not None else schema
    schema = _resolve(schema, root)
    if isinstance(value, str):
        branches = [_resolve(b, root) for b in schema.get("oneOf") or schema.get("anyOf") or [schema]]
        types = set().union(*(_types(b) for b in branches))
        if not types or "string" in types or not types & {"boolean", "integer", "number", "null"}:
            return value
        return _read(value, types, key or "(top level)")
    if isinstance(value, (dict, list)) and (schema.get("oneOf") or schema.get("anyOf")):
        want = "object" if isinstance(value, dict) else "array"
        branch = next(
            (b for b in (_resolve(b, root) for b in schema.get("oneOf") or schema["anyOf"]) if want in _types(b)),
            None,
        )
        return coerce_strings(value, branch, root, key) if branch else value
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        out = {}
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            out[k] = coerce_strings(v, sub, root, f"{key}.{k}" if key else str(k)) if sub else v
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce_strings(v, schema["items"], root, f"{key}.{i}") for i, v in enumerate(value)]
    return value


def fill_defaults(value, schema: dict, root: dict | None = None):
    """``value`` with the ``x-default`` of every property missing from an object it has (a section that may be
    null, when present); everything else as it was."""
    root = root if root is not None else schema
    schema = _resolve(schema, root)
    if not isinstance(value, dict):
        return value
    props = schema.get("properties") or {}
    out = dict(value)
    for k, sub in props.items():
        sub = _resolve(sub, root)
        if k not in out and "x-default" in sub:
            out[k] = sub["x-default"]
        elif isinstance(out.get(k), dict):
            out[k] = fill_defaults(out[k], sub, root)
    return out
