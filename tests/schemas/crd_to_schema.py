"""Turn a CustomResourceDefinition into the JSON schema the contrib tests vendor.

    python tests/schemas/crd_to_schema.py CRD.yaml VERSION > tests/schemas/KIND.json

Why a conversion and not the CRD as it is: a CRD's ``openAPIV3Schema`` is
close to JSON Schema, but the API server is stricter than the schema reads.
With kubectl's default field validation (``--validate=strict``) an unknown
field is an error, so every object that lists its ``properties`` and says
nothing about ``additionalProperties`` gets ``additionalProperties: false``
(unless it carries ``x-kubernetes-preserve-unknown-fields``). ``apiVersion``
and ``kind`` are pinned to the CRD's own. Descriptions are dropped: they are
most of the file and validate nothing. Nothing here fetches anything.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml


def crd_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """The JSON schema of ``version`` of this CRD's resource, strict as kubectl is."""
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    served = {v["name"]: v for v in crd["spec"]["versions"]}
    schema = _strict(served[version]["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "metadata"})
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": f"{kind} {group}/{version}",
        **schema,
    }


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items() if key != "description"}
    if "properties" in node:
        # Property names are data, not keywords: keep a field called "description".
        out["properties"] = {name: _strict(sub) for name, sub in node["properties"].items()}
        if ("additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
    return out


def main() -> None:
    path, version = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        crd = yaml.safe_load(f)
    json.dump(crd_schema(crd, version), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
