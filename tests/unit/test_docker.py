"""docker/: what can be checked without a Docker engine.

compose.yml is parsed as YAML (merge keys and ``${VAR:-default}`` resolved like
Compose does) and checked against the code: every command parses with the real
click CLI, every ``INTEREST_*`` variable is a setting with a valid value, the
Kafka listeners agree with the clients' bootstrap and the published ports, volumes
and paths line up (the model the worker/API load is the one ``train`` writes), and
the Dockerfiles copy what exists and install extras that exist. The `opensearch`
profile's cluster, sink and the API's switch to it are checked the same way.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import click
import faust
import pytest
import yaml

from interest_stream.cli import main as cli
from interest_stream.core.settings import ENV_PREFIX, Settings
from interest_stream.index.opensearch_local.config import DEFAULT_OPENSEARCH_VERSION
from interest_stream.streams.kafka_local.broker import DEFAULT_KAFKA_VERSION

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
APP_IMAGE = "interest-stream:latest"
FAUST_PREFIX = "INTEREST_FAUST_"
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _interpolate(node: Any) -> Any:
    """``${VAR:-default}`` -> the variable if set and not empty, else default (as Compose)."""
    if isinstance(node, str):
        return _VAR.sub(lambda m: os.environ.get(m.group(1)) or m.group(2) or "", node)
    if isinstance(node, list):
        return [_interpolate(n) for n in node]
    if isinstance(node, dict):
        return {k: _interpolate(v) for k, v in node.items()}
    return node


def _load() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yml").read_text())
    assert isinstance(data, dict)
    return _interpolate(data)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]  # type: ignore[no-any-return]


def _app_services(services: dict[str, Any]) -> dict[str, Any]:
    return {n: s for n, s in services.items() if s.get("image") == APP_IMAGE}


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form of environment"
    return {k: str(v) for k, v in env.items()}


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """container path -> (source, read_only)."""
    out = {}
    for spec in service.get("volumes", []):
        parts = spec.split(":")
        out[parts[1]] = (parts[0], len(parts) > 2 and parts[2] == "ro")
    return out


def test_services_and_images(services: dict[str, Any]) -> None:
    assert {"kafka", "topics", "worker", "api", "train", "replay"} <= set(services)
    assert services["kafka"]["image"] == f"apache/kafka:{DEFAULT_KAFKA_VERSION}"
    apps = _app_services(services)
    assert set(apps) == {"topics", "worker", "api", "opensearch-sink", "train", "replay"}
    for name, svc in apps.items():
        build = svc["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).is_file(), name
    # one-shot jobs run only on request
    assert services["train"]["profiles"] == ["train"]
    assert services["replay"]["profiles"] == ["replay"]
    # the cluster mode's services run only in their profile; the default stack is unchanged
    assert {n for n, s in services.items() if s.get("profiles") == ["opensearch"]} == {
        "opensearch",
        "opensearch-sink",
    }


def test_commands_parse_with_the_real_cli(services: dict[str, Any]) -> None:
    for name, svc in _app_services(services).items():
        # container paths under a bind mount -> the host files (click checks they exist)
        binds = {t: DOCKER / src for t, (src, _) in _mounts(svc).items() if src[0] in "./"}
        args = [
            next((str(h) + a[len(t) :] for t, h in binds.items() if a.startswith(t + "/")), a)
            for a in svc["command"]
        ]
        ctx = cli.make_context("interest-stream", list(args), resilient_parsing=False)
        verb = ctx.protected_args[0] if ctx.protected_args else ctx.args[0]
        cmd = cli.get_command(ctx, verb)
        assert cmd is not None, f"{name}: no CLI verb {verb!r}"
        rest = args[args.index(verb) + 1 :]
        try:
            cmd.make_context(verb, rest, parent=ctx)
        except click.UsageError as exc:  # pragma: no cover - the failure message
            pytest.fail(f"{name}: `interest-stream {' '.join(args)}` does not parse: {exc}")
    # and a command that would not parse is caught by this check
    with pytest.raises(click.UsageError):
        cli.get_command(cli.make_context("x", ["train"]), "train").make_context(  # type: ignore[union-attr]
            "train", ["--no-such-option"]
        )


def test_environment_names_and_values_are_settings(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = {f"{ENV_PREFIX}{n.upper()}" for n in Settings.model_fields}
    # the worker passes INTEREST_FAUST_<NAME> to Faust (README): names of Faust settings
    fields |= {
        f"{FAUST_PREFIX}{p.env_name}" for p in faust.Settings.SETTINGS.values() if p.env_name
    }
    for name, svc in _app_services(services).items():
        env = _env(svc)
        unknown = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in fields)
        assert unknown == [], f"{name}: not settings: {unknown}"
        for key in fields:
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        s = Settings()  # validates every value the way the container will
        assert s.kafka_bootstrap == "kafka:9092", name


def test_kafka_listeners_match_clients_and_ports(services: dict[str, Any]) -> None:
    env = _env(services["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert len(env["CLUSTER_ID"]) == 22

    def names(spec: str) -> dict[str, str]:
        return dict(item.split("://", 1) for item in spec.split(","))

    listeners = names(env["KAFKA_LISTENERS"])
    advertised = names(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols) and set(advertised) <= set(listeners)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    voter_host = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")[1]
    assert voter_host.split(":")[1] == listeners["CONTROLLER"].rsplit(":", 1)[1]
    # inside the network: the app containers' bootstrap is an advertised listener
    inside = advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert inside == "kafka:9092" == services["kafka"]["hostname"] + ":9092"
    # from the host: the published port leads to the listener advertised as that port
    (mapping,) = services["kafka"]["ports"]
    bind, host_port, container_port = mapping.split(":")
    host_listener = next(n for n, a in advertised.items() if a.startswith("127.0.0.1:"))
    assert advertised[host_listener] == f"{bind}:{host_port}"
    assert listeners[host_listener] == f":{container_port}"
    assert f"{bind}:{host_port}" == Settings.model_fields["kafka_bootstrap"].default


def test_volumes_paths_and_dependencies(services: dict[str, Any], compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, svc in services.items():
        for source, _ro in _mounts(svc).values():
            assert source.startswith(("/", ".")) or source in declared, f"{name}: {source}"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
    model_dir = {_env(services[n])["INTEREST_MODEL_DIR"] for n in ("worker", "api", "train")}
    assert len(model_dir) == 1
    (model_dir_path,) = model_dir
    train_cmd = services["train"]["command"]
    assert train_cmd[train_cmd.index("--out") + 1] == model_dir_path
    for name in ("worker", "api", "train"):
        mounts = _mounts(services[name])
        holder = [p for p in mounts if model_dir_path.startswith(p + "/")]
        assert holder and mounts[holder[0]][0] == "models", name
        assert mounts[holder[0]][1] is (name != "train"), f"{name}: models read-only except train"
    # the data the jobs read exists next to the repository (the default mount)
    for name in ("train", "replay"):
        src = Path(_mounts(services[name])["/data"][0])
        events = services[name]["command"][services[name]["command"].index("--events") + 1]
        assert (DOCKER / src / events.removeprefix("/data/")).is_file(), name
    # the worker keeps RocksDB state on its own volume
    state = _env(services["worker"])["INTEREST_STATE_DIR"]
    assert any(state.startswith(p) for p in _mounts(services["worker"]))
    # the API is published where it listens, on loopback only
    api_env = _env(services["api"])
    assert api_env["INTEREST_API_HOST"] == "0.0.0.0"
    assert services["api"]["ports"] == [f"127.0.0.1:{api_env['INTEREST_API_PORT']}:8000"]
    for name in ("worker", "api", "replay"):
        cond = services[name]["depends_on"]["topics"]["condition"]
        assert cond == "service_completed_successfully", name
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_opensearch_profile(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    node = services["opensearch"]
    # the engine the local CLI installs, one node, no security plugin, k-NN (in the image)
    assert node["image"] == f"opensearchproject/opensearch:{DEFAULT_OPENSEARCH_VERSION}"
    env = _env(node)
    assert env["discovery.type"] == "single-node"
    assert env["DISABLE_SECURITY_PLUGIN"] == "true"
    # 2.12+ demands an admin password unless the demo security config is skipped
    assert env["DISABLE_INSTALL_DEMO_CONFIG"] == "true"
    assert "plugins.security.disabled" not in env and "knn" not in " ".join(env).lower()
    heap = re.findall(r"-Xm[sx](\d+)([mg])", env["OPENSEARCH_JAVA_OPTS"])
    assert len(heap) == 2 and heap[0] == heap[1], "fixed heap (-Xms = -Xmx)"
    assert node["volumes"] == ["opensearch-data:/usr/share/opensearch/data"]
    # healthy = the cluster answers yellow or green over plain HTTP (no TLS, no auth)
    health = node["healthcheck"]
    probe = " ".join(health["test"])
    assert health["test"][0] == "CMD-SHELL" and "http://localhost:9200/_cluster/health" in probe
    assert "wait_for_status=yellow" in probe and "curl -fsS" in probe  # -f: HTTP errors fail
    assert health["retries"] >= 3 and health["start_period"]
    # published on loopback where the CLI's default URL points
    (mapping,) = node["ports"]
    bind, host_port, container_port = mapping.split(":")
    assert f"http://{bind}:{host_port}" == Settings.model_fields["opensearch_url"].default
    inside = f"http://{node['hostname']}:{container_port}"

    sink = services["opensearch-sink"]
    assert sink["command"] == ["opensearch", "sink"]
    assert _env(sink)["INTEREST_OPENSEARCH_URL"] == inside
    assert sink["depends_on"]["opensearch"]["condition"] == "service_healthy"
    assert sink["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert _mounts(sink)["/models"] == ("models", True)
    assert _env(sink)["INTEREST_MODEL_DIR"] == _env(services["api"])["INTEREST_MODEL_DIR"]

    # the API: faiss unless INTEREST_USER_STORE=opensearch, then the same cluster
    api_env = _env(services["api"])
    assert api_env["INTEREST_USER_STORE"] == os.environ.get("INTEREST_USER_STORE", "faiss")
    monkeypatch.setenv("INTEREST_USER_STORE", "opensearch")
    switched = _env(_load()["services"]["api"])
    assert switched["INTEREST_USER_STORE"] == "opensearch"
    for key in [f"{ENV_PREFIX}{n.upper()}" for n in Settings.model_fields]:
        if key != "INTEREST_USER_STORE":
            monkeypatch.delenv(key, raising=False)
    for key, value in switched.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.user_store == "opensearch" and s.opensearch_url == inside
    monkeypatch.setenv("INTEREST_USER_STORE", "")
    assert _env(_load()["services"]["api"])["INTEREST_USER_STORE"] == "faiss"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles(dockerfile: str) -> None:
    text = (DOCKER / dockerfile).read_text()
    lines = text.replace("\\\n", " ").splitlines()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for line in lines:
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"{dockerfile}: COPY {src} missing"
    entry = next(line for line in lines if line.startswith("ENTRYPOINT"))
    assert entry == 'ENTRYPOINT ["interest-stream"]'
    assert "interest-stream" in pyproject["project"]["scripts"]
    cmd = re.search(r'^CMD \["(\w+)"\]', text, re.M)
    assert cmd is not None and cmd.group(1) in cli.commands
    extras = re.findall(r"'\.\[(\w+)\]'", text)
    assert extras and all(e in pyproject["project"]["optional-dependencies"] for e in extras)
    fields = {f"{ENV_PREFIX}{n.upper()}" for n in Settings.model_fields}
    env_names = set(re.findall(r"\b(INTEREST_\w+)=", text))
    assert env_names and env_names <= fields, env_names - fields
    assert "USER interest" in lines
    # the matching ignore file keeps the context to what is copied (no .venv, no data)
    ignore = (DOCKER / f"{dockerfile}.dockerignore").read_text().splitlines()
    assert ignore[1] == "*" and "!interest_stream" in ignore


def test_api_reaches_the_worker_for_explanations(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """explain=true: the API names the worker by its service name, and the worker's web
    server listens beyond its own loopback (Faust reads the bind from the environment,
    over the worker's 127.0.0.1 default)."""
    api, worker = _env(services["api"]), _env(services["worker"])
    assert api["INTEREST_WORKER_URLS"] == f"http://worker:{worker['INTEREST_WORKER_WEB_PORT']}"
    bind = worker[f"{FAUST_PREFIX}WEB_BIND"]
    assert bind == "0.0.0.0"
    monkeypatch.setenv(f"{FAUST_PREFIX}WEB_BIND", bind)
    app = faust.App("compose-check", env_prefix=FAUST_PREFIX, web_bind="127.0.0.1")
    assert app.conf.web_bind == bind
