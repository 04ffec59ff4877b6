"""Render config/README.md from the schema: ``python -m cohortseg.configdoc > config/README.md``.

A test checks that the committed file equals this rendering, so the reference never drifts.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from .config import SCHEMA

HEADER = """# Configuration reference

`config/config.yaml` is the study's configuration; `config/demo.yaml` the embedded synthetic cohort's
(`make demo`); `tests/config/tiny.yaml` the end-to-end tests'. Pass another with
`snakemake --configfile my.yaml` (it is merged over `config/config.yaml`; lists replace lists).
Snakemake validates the merged config against `config/config.schema.yaml` and fills in every default
below; every `cohortseg <stage>` command does the same. Unknown keys are errors.

This page is generated from the schema (`python -m cohortseg.configdoc > config/README.md`); a test
fails when the two differ.

| key | default | description |
|---|---|---|
"""


def _default(v: Any) -> str:
    if isinstance(v, (dict, list)) and len(json.dumps(v)) > 60:
        return "see schema" if isinstance(v, list) else "`{}`"
    return f"`{json.dumps(v)}`"


def rows(schema: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, spec in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        desc = " ".join(str(spec.get("description", "")).split())
        enum = spec.get("enum")
        if enum:
            desc += f" One of: {', '.join(f'`{e}`' for e in enum)}."
        cells = [f"`{path}`", _default(spec.get("default")), desc]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        if spec.get("type") == "object" and "properties" in spec:
            out.extend(rows(spec, path + "."))
    return out


def render() -> str:
    schema = yaml.safe_load(SCHEMA.read_text())
    rules = schema["properties"]["select"]["properties"]["rules"]["default"]
    text = HEADER + "\n".join(rows(schema)) + "\n"
    text += "\n## Default selection rules (`select.rules`)\n\nTried in order; a series is rejected with the first matching reason.\n\n"
    text += "| reason | reject_if |\n|---|---|\n"
    for r in rules:
        cond = json.dumps(r["reject_if"]).replace("|", "\\|")
        text += f"| `{r['reason']}` | `{cond}` |\n"
    text += (
        "\nFields usable in conditions are the columns of `results/cohort/series.tsv` (see the index stage in the "
        "README). Operators: `equals`, `in`, `regex` (case-insensitive search), `min`, `max`, `missing`, "
        "`orientation` (planes, with `within_deg`), and "
        "`not` / `any` / `all` to combine.\n"
    )
    return text


if __name__ == "__main__":
    print(render(), end="")
