"""The deployment examples in examples/deploy agree with each other and with affinity_mw.config.OPTIONS.

Docker and Kubernetes are not available here, so nothing is started: the manifests are parsed and cross-checked.
The checks are functions that return a list of problems, so the same code that passes on the shipped files is
shown (``test_a_*_change_in_one_place_is_caught``) to fail when a name or a port changes in one place only.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import importlib.metadata
import io
import json
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from affinity_mw.cli import build_parser
from affinity_mw.config import OPTIONS, ConfigurationError, Settings
from affinity_mw.membership import membership_from_settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "examples" / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
GUIDE = ROOT / "docs" / "deploy.md"

OPTION_ENVS = frozenset(option.env for option in OPTIONS)
DEFAULTS: dict[str, Any] = {option.env: option.default for option in OPTIONS}
# Non-AFFINITY variables the manifests may set (downward API values the library reads).
OTHER_ENVS = frozenset({"POD_IP", "POD_NAMESPACE"})
FAKE_SECRET = "deploy-test-secret-0123456789"
FAKE_POD_IP = "10.0.0.7"

Doc = dict[str, Any]


# ---------------------------------------------------------------------------------------------------- loading


def load_yaml(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@dataclass
class Image:
    """What the Dockerfile's CMD serves."""

    port: int
    exposed: set[int]
    graceful_timeout: int | None


def load_image(text: str | None = None) -> Image:
    text = DOCKERFILE.read_text() if text is None else text
    cmds = [line for line in text.splitlines() if line.startswith("CMD ")]
    assert cmds, "the Dockerfile has no CMD"
    argv: list[str] = json.loads(cmds[-1][4:])  # exec form, so uvicorn is PID 1 and gets SIGTERM
    assert "--port" in argv, f"the Dockerfile's CMD names no --port: {argv}"

    def flag(name: str) -> int | None:
        return int(argv[argv.index(name) + 1]) if name in argv else None

    exposed = {
        int(p.split("/")[0]) for line in text.splitlines() if line.startswith("EXPOSE ") for p in line.split()[1:]
    }
    port = flag("--port")
    assert port is not None
    return Image(port=port, exposed=exposed, graceful_timeout=flag("--timeout-graceful-shutdown"))


@dataclass
class Cluster:
    """The kustomization, its resources (namespace applied) and the Secret template."""

    kustomization: Doc
    docs: list[Doc]
    secret_template: Doc

    @property
    def namespace(self) -> str:
        return str(self.kustomization.get("namespace") or "default")

    def one(self, kind: str, predicate: Callable[[Doc], bool] = lambda _: True) -> Doc:
        found = [doc for doc in self.docs if doc.get("kind") == kind and predicate(doc)]
        assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
        return found[0]

    @property
    def workload(self) -> Doc:
        found = [doc for doc in self.docs if doc.get("kind") in ("StatefulSet", "Deployment")]
        assert len(found) == 1, f"expected one StatefulSet or Deployment, found {len(found)}"
        return found[0]

    @property
    def container(self) -> Doc:
        containers: list[Doc] = [
            c for c in self.workload["spec"]["template"]["spec"]["containers"] if _names(c.get("env", [])) & OPTION_ENVS
        ]
        assert len(containers) == 1, "expected one container configured with AFFINITY_* variables"
        return containers[0]


def load_cluster() -> Cluster:
    kustomization = load_yaml(K8S / "kustomization.yaml")[0]
    docs: list[Doc] = []
    for resource in kustomization["resources"]:
        for doc in load_yaml(K8S / resource):
            if kustomization.get("namespace") and doc.get("kind") != "Namespace":
                doc.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
            docs.append(doc)
    return Cluster(kustomization, docs, load_yaml(K8S / "secret.example.yaml")[0])


def load_compose() -> Doc:
    compose = load_yaml(COMPOSE)
    assert len(compose) == 1
    return compose[0]


def _names(env: list[Doc]) -> set[str]:
    return {str(entry["name"]) for entry in env}


def compose_environment(service: Doc) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["NAME=value", ...]
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(name): "" if value is None else str(value) for name, value in env.items()}


def pod_environment(cluster: Cluster) -> dict[str, str]:
    """The container's environment as the kubelet would build it, with stand-ins for the Secret and the downward
    API. ``$(NAME)`` expands only to a variable defined earlier in the list, as in Kubernetes; anything else stays
    as written (and then fails the checks)."""
    env: dict[str, str] = {}
    for entry in cluster.container.get("env", []):
        if "value" in entry:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), str(entry["value"]))
        else:
            source = entry.get("valueFrom", {})
            field = source.get("fieldRef", {}).get("fieldPath")
            if field == "metadata.namespace":
                value = cluster.namespace
            elif field in ("status.podIP", "status.podIPs"):
                value = FAKE_POD_IP
            elif "secretKeyRef" in source:
                value = FAKE_SECRET
            else:
                value = f"<unresolved {entry['name']}>"
        env[str(entry["name"])] = value
    return env


# ---------------------------------------------------------------------------------------------------- checks


def env_name_problems(names: set[str], where: str) -> list[str]:
    """Every AFFINITY_* name is a real option, and nothing looks like a misspelled one."""
    problems = []
    for name in sorted(names - OPTION_ENVS - OTHER_ENVS):
        close = difflib.get_close_matches(name, OPTION_ENVS, n=1, cutoff=0.8)
        if name.upper().startswith(("AFFINITY", "AFINITY", "AFFINTY")) or close:
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{where}: {name} is not an affinity-mw option{hint}")
    return problems


def health_path(env: dict[str, str]) -> str:
    return env.get("AFFINITY_HEALTH_PATH", str(DEFAULTS["AFFINITY_HEALTH_PATH"])).strip()


def parse_duration(text: str) -> float:
    """A compose duration such as ``40s``, ``1m30s`` or ``500ms``."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"unreadable duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def settings_problems(env: dict[str, str], where: str) -> list[str]:
    try:
        Settings.load(environ=env)
    except ConfigurationError as exc:
        return [f"{where}: {exc}"]
    return []


def compose_problems(compose: Doc, image: Image) -> list[str]:
    problems: list[str] = []
    services: dict[str, Doc] = compose["services"]
    port = image.port
    expected = {name: f"http://{name}:{port}" for name in services}
    networks = [set(service.get("networks") or ["default"]) for service in services.values()]
    if not set.intersection(*networks):
        problems.append("the services share no network, so peers cannot reach each other by name")
    for name, service in services.items():
        env = compose_environment(service)
        problems += env_name_problems(set(env), f"compose {name}")
        peers = [p.strip() for p in env.get("AFFINITY_PEERS", "").split(",") if p.strip()]
        if sorted(peers) != sorted(expected.values()):
            problems.append(f"compose {name}: AFFINITY_PEERS {peers} is not exactly {sorted(expected.values())}")
        if env.get("AFFINITY_SELF") != expected[name]:
            problems.append(f"compose {name}: AFFINITY_SELF {env.get('AFFINITY_SELF')!r} is not {expected[name]!r}")
        if not env.get("AFFINITY_SECRET", "").startswith("${AFFINITY_SECRET"):
            problems.append(f"compose {name}: AFFINITY_SECRET must come from the environment or .env, not the file")
        if "AFFINITY_KEY" not in env:
            problems.append(f"compose {name}: no AFFINITY_KEY")
        path = health_path(env)
        check = service.get("healthcheck", {}).get("test", [])
        check_text = " ".join(check) if isinstance(check, list) else str(check)
        if not re.search(rf"http://127\.0\.0\.1:{port}{re.escape(path)}(?![\w/.-])", check_text):
            problems.append(f"compose {name}: the healthcheck does not ask http://127.0.0.1:{port}{path}")
        for mapping in service.get("ports", []):
            container_port = int(str(mapping).split(":")[-1].split("/")[0])
            if container_port != port:
                problems.append(f"compose {name}: publishes container port {container_port}, uvicorn serves {port}")
        grace = parse_duration(service.get("stop_grace_period", "10s"))
        if image.graceful_timeout is not None and grace <= image.graceful_timeout:
            problems.append(
                f"compose {name}: stop_grace_period {grace:g}s is not above uvicorn's graceful shutdown "
                f"({image.graceful_timeout}s)"
            )
        resolved = dict(env, AFFINITY_SECRET=FAKE_SECRET)
        invalid = settings_problems(resolved, f"compose {name}")
        problems += invalid
        if not invalid:
            try:
                self_id = membership_from_settings(Settings.load(environ=resolved)).self_id
            except ValueError as exc:  # AFFINITY_SELF not among the peers, a peer listed twice ...
                problems.append(f"compose {name}: {exc}")
            else:
                if self_id != expected[name]:
                    problems.append(f"compose {name}: the node would be {self_id!r}, not {expected[name]!r}")
    return problems


def _probe_problems(probe: Doc | None, kind: str, path: str, port: int, port_name: str | None) -> list[str]:
    if not probe or "httpGet" not in probe:
        return [f"the container has no HTTP {kind}"]
    get = probe["httpGet"]
    problems = []
    if get.get("path") != path:
        problems.append(f"{kind} asks {get.get('path')!r}, the health path is {path!r}")
    if get.get("port") not in (port, port_name) or get.get("port") is None:
        problems.append(f"{kind} asks port {get.get('port')!r}, the container serves {port} ({port_name})")
    return problems


SEPARATORS = frozenset({";", "&&", "||", "|", "&"})
REDIRECTION = re.compile(r"(?<![^\s;&|])\d*(?:&>>?|>>|>&|<&|>\||[<>])\s*[^\s;&|<>]+")  # 2>&1, >/dev/null ...


def shell_commands(script: str) -> list[tuple[str, list[str]]]:
    """The simple commands of a one-line shell script, each with the operator before it (";" for the first):
    ``a && b; c`` is ``[(";", a), ("&&", b), (";", c)]``; redirections are left out. Enough for a preStop hook,
    not a shell."""
    script = script.replace("\\\n", " ").replace("\n", " ; ")
    # Redirections outside quotes (the odd parts of the split are quoted strings).
    parts = re.split(r"""('[^']*'|"(?:\\.|[^"\\])*")""", script)
    script = "".join(part if n % 2 else REDIRECTION.sub(" ", part) for n, part in enumerate(parts))
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[tuple[str, list[str]]] = []
    op, argv = ";", []
    for token in lexer:
        if token in SEPARATORS:
            if argv:
                commands.append((op, argv))
            op, argv = token, []
        else:
            argv.append(token)
    if argv:
        commands.append((op, argv))
    return commands


def _assignments(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``NAME=value`` words before a command, and the command."""
    env: dict[str, str] = {}
    while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):
        name, value = argv[0].split("=", 1)
        env[name] = value
        argv = argv[1:]
    return env, argv


def prestop_problems(container: Doc, env: dict[str, str], port: int) -> tuple[list[str], float | None]:
    """The preStop hook drains this pod with ``affinity-mw drain http://127.0.0.1:PORT``, signed with the
    container's AFFINITY_SECRET, then sleeps whether or not the drain call succeeded. Returns the problems and
    the seconds it sleeps after the drain."""
    command = [
        str(word) for word in container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    ]
    if not command:
        return ["the container has no preStop exec hook"], None
    shell = Path(command[0]).name in ("sh", "bash", "dash", "ash") and len(command) >= 3 and command[1] == "-c"
    try:
        commands = shell_commands(command[2] if shell else shlex.join(command))
    except ValueError as exc:  # an unclosed quote
        return [f"the preStop hook's script does not parse: {exc}"], None
    expected = f"http://127.0.0.1:{port}"
    problems: list[str] = []
    drains = [
        i
        for i, (_, argv) in enumerate(commands)
        if [Path(w).name for w in _assignments(argv)[1][:2]] == ["affinity-mw", "drain"]
    ]
    if len(drains) != 1:
        problems.append(f"the preStop hook does not run `affinity-mw drain {expected}` (once)")
    else:
        assigned, argv = _assignments(commands[drains[0]][1])
        try:
            with contextlib.redirect_stderr(io.StringIO()) as errors:
                args = build_parser().parse_args(argv[1:])
        except SystemExit:
            problems.append(f"the preStop hook's `{shlex.join(argv)}` is not a valid command: {errors.getvalue()}")
        else:
            # The URL as the command resolves it: a default counts as written.
            if args.url.rstrip("/") != expected:
                problems.append(f"the preStop hook drains {args.url}, not this pod at {expected}")
            if args.undo:
                problems.append("the preStop hook undoes a drain (--undo) instead of draining")
            if args.secret is not None:
                problems.append("the preStop hook passes --secret: the drain must be signed with AFFINITY_SECRET")
        # The command reads AFFINITY_SECRET and AFFINITY_HEALTH_PATH from its environment: the container's.
        hook_env = {**env, **assigned}
        if not hook_env.get("AFFINITY_SECRET"):
            problems.append("the container env has no AFFINITY_SECRET, so `affinity-mw drain` cannot sign the drain")
        elif hook_env["AFFINITY_SECRET"] != env.get("AFFINITY_SECRET"):
            problems.append("the preStop hook overrides AFFINITY_SECRET: it must sign with the server's secret")
        if health_path(hook_env) != health_path(env):
            problems.append(
                f"the preStop hook drains under {health_path(hook_env)!r}, the server's health path is "
                f"{health_path(env)!r}"
            )
    start = drains[0] if drains else -1
    sleeps = [i for i, (_, argv) in enumerate(commands) if i > start and argv[:1] == ["sleep"]]
    if not sleeps:
        problems.append("the preStop hook does not sleep after draining")
        return problems, None
    total = 0.0
    for i in sleeps:
        # After ";" a command runs whatever came before it; after "&&" or "||" only on success or failure.
        if commands[i][0] != ";":
            problems.append(
                f"the preStop hook's sleep runs only after {commands[i][0]!r}: use ';', so it waits even if the drain "
                "call fails"
            )
        for word in commands[i][1][1:]:
            try:
                total += parse_duration(word if word[-1:].isalpha() else word + "s")
            except AssertionError:
                problems.append(f"the preStop hook sleeps {word!r}: not a duration")
    return problems, total


def _selects(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def kubernetes_problems(cluster: Cluster, image: Image) -> list[str]:
    problems: list[str] = []
    workload = cluster.workload
    pod = workload["spec"]["template"]
    labels: dict[str, str] = pod["metadata"]["labels"]
    container = cluster.container
    problems += env_name_problems(_names(container.get("env", [])), "kubernetes")
    env = pod_environment(cluster)

    ports = container.get("ports", [])
    if len(ports) != 1:
        return [*problems, f"expected one container port, found {len(ports)}"]
    port: int = ports[0]["containerPort"]
    port_name: str | None = ports[0].get("name")
    if port != image.port:
        problems.append(f"the container port {port} is not the port the Dockerfile's CMD serves ({image.port})")
    if image.exposed and port not in image.exposed:
        problems.append(f"the container port {port} is not EXPOSEd by the Dockerfile ({sorted(image.exposed)})")

    def target(service_port: Doc) -> Any:
        return service_port.get("targetPort", service_port.get("port"))

    # Membership: AFFINITY_DNS names the headless Service, in this namespace, at the container's port.
    headless = [d for d in cluster.docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
    if len(headless) != 1:
        return [*problems, f"expected one headless Service (clusterIP: None), found {len(headless)}"]
    peers = headless[0]
    if peers["spec"].get("publishNotReadyAddresses") is not False:
        problems.append("the headless Service must set publishNotReadyAddresses: false (draining pods leave DNS)")
    if not _selects(peers["spec"].get("selector"), labels):
        problems.append("the headless Service does not select the pods")
    dns = env.get("AFFINITY_DNS", "")
    zone = r"\.svc(?:\.cluster\.local)?\.?"
    srv = re.fullmatch(rf"srv:_(?P<port>[a-z0-9-]+)\._tcp\.(?P<svc>[a-z0-9-]+)\.(?P<ns>[a-z0-9-]+){zone}", dns)
    a = re.fullmatch(rf"(?P<svc>[a-z0-9-]+)\.(?P<ns>[a-z0-9-]+){zone}", dns)
    match = srv or a
    if match is None:
        problems.append(
            f"AFFINITY_DNS {dns!r} is neither srv:_PORT._tcp.SERVICE.NAMESPACE.svc... nor SERVICE.NAMESPACE.svc..."
        )
    else:
        if match["svc"] != peers["metadata"]["name"]:
            problems.append(
                f"AFFINITY_DNS names Service {match['svc']!r}, the headless one is {peers['metadata']['name']!r}"
            )
        if match["ns"] != peers["metadata"].get("namespace", "default"):
            problems.append(f"AFFINITY_DNS names namespace {match['ns']!r}, the Service is in {cluster.namespace!r}")
        if srv is not None:
            named = [p for p in peers["spec"]["ports"] if p.get("name") == srv["port"]]
            if len(named) != 1:
                problems.append(
                    f"the headless Service has no port named {srv['port']!r} (the SRV name's _{srv['port']})"
                )
            else:
                if named[0].get("protocol", "TCP") != "TCP":
                    problems.append("the headless Service's SRV port is not TCP")
                # SRV records of a headless Service carry the endpoint port: the container port, not `port`.
                if target(named[0]) not in (port, port_name):
                    problems.append(f"the headless Service targets {target(named[0])!r}, the container serves {port}")
            if workload["kind"] != "StatefulSet" or workload["spec"].get("serviceName") != peers["metadata"]["name"]:
                problems.append("SRV ids are stable only for a StatefulSet whose serviceName is the headless Service")
        elif int(env.get("AFFINITY_DNS_PORT", DEFAULTS["AFFINITY_DNS_PORT"])) != port:
            problems.append(f"AFFINITY_DNS_PORT {env.get('AFFINITY_DNS_PORT')!r} is not the container port {port}")
    if "AFFINITY_SELF" not in env and env.get("POD_IP") != FAKE_POD_IP:
        problems.append("without AFFINITY_SELF a pod needs POD_IP (fieldRef status.podIP) to find itself")

    # Clients and disruptions reach the same pods.
    for service in cluster.docs:
        if service["kind"] == "Service" and service is not peers:
            if not _selects(service["spec"].get("selector"), labels):
                problems.append(f"Service {service['metadata']['name']} does not select the pods")
            for service_port in service["spec"]["ports"]:
                if target(service_port) not in (port, port_name):
                    problems.append(
                        f"Service {service['metadata']['name']} targets {target(service_port)!r}, not {port}"
                    )
    pdbs = [d for d in cluster.docs if d["kind"] == "PodDisruptionBudget"]
    if len(pdbs) != 1 or not _selects(pdbs[0]["spec"].get("selector", {}).get("matchLabels"), labels):
        problems.append("expected one PodDisruptionBudget selecting the pods")
    if not _selects(workload["spec"]["selector"].get("matchLabels"), labels):
        problems.append("the workload's selector does not match its pod labels")

    # The Secret reference matches the template; the requests are set.
    refs = [
        e["valueFrom"]["secretKeyRef"] for e in container["env"] if e["name"] == "AFFINITY_SECRET" and "valueFrom" in e
    ]
    template = cluster.secret_template
    if len(refs) != 1:
        problems.append("AFFINITY_SECRET must come from a Secret (valueFrom.secretKeyRef)")
    elif refs[0].get("name") != template["metadata"]["name"] or refs[0].get("key") not in template.get(
        "stringData", {}
    ):
        problems.append(f"AFFINITY_SECRET refers to {refs[0]}, the template is {template['metadata']['name']}")
    if not container.get("resources", {}).get("requests"):
        problems.append("the container has no resource requests")

    # Health: probes and the drain hook use the health path and the container port.
    path = health_path(env)
    if not path:
        return [*problems, "AFFINITY_HEALTH_PATH is empty: there is nothing to probe or drain"]
    readiness = container.get("readinessProbe")
    problems += _probe_problems(readiness, "readinessProbe", path, port, port_name)
    problems += _probe_problems(container.get("livenessProbe"), "livenessProbe", path, port, port_name)
    hook_problems, sleep = prestop_problems(container, env, port)
    problems += hook_problems
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    if sleep is not None:
        probe_time = (readiness or {}).get("periodSeconds", 10) * (readiness or {}).get("failureThreshold", 3)
        if sleep <= probe_time:
            problems.append(f"the preStop sleep ({sleep:g}s) ends before readiness can fail ({probe_time}s)")
        if grace <= sleep:
            problems.append(f"terminationGracePeriodSeconds {grace} is not above the preStop sleep {sleep:g}")
        elif image.graceful_timeout is not None and grace < sleep + image.graceful_timeout:
            problems.append(
                f"terminationGracePeriodSeconds {grace} leaves in-flight requests less than uvicorn's "
                f"{image.graceful_timeout}s after the {sleep:g}s preStop sleep"
            )
    problems += settings_problems(env, "kubernetes")
    return problems


# ---------------------------------------------------------------------------------------------------- tests


def manifest_files() -> Iterator[Path]:
    yield from sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


@pytest.mark.parametrize("path", list(manifest_files()), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_parses(path: Path) -> None:
    docs = load_yaml(path)
    assert docs, f"{path} holds no YAML document"
    if path.is_relative_to(K8S):
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), f"{path}: a document without apiVersion/kind"
            if doc["kind"] != "Kustomization":
                assert doc.get("metadata", {}).get("name"), f"{path}: a {doc['kind']} without a name"


def test_kustomization_applies_every_manifest_but_the_secret_template() -> None:
    listed = set(load_yaml(K8S / "kustomization.yaml")[0]["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == {name for name in present if not name.endswith(".example.yaml")}
    kinds = {doc["kind"] for doc in load_cluster().docs}
    assert {"Service", "StatefulSet", "PodDisruptionBudget"} <= kinds
    assert "Secret" not in kinds, "a real secret must not be applied from the repository"


def test_dockerfile_serves_one_port() -> None:
    image = load_image()
    assert image.exposed == {image.port}
    assert "--workers" not in DOCKERFILE.read_text().split("CMD", 1)[-1], "draining is per process: one per container"


def test_the_image_installs_the_drain_command() -> None:
    """The preStop hook runs ``affinity-mw drain``: the console script of the package the Dockerfile installs."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^COPY affinity_mw\b", text, re.M), "the Dockerfile does not copy the package"
    assert re.search(r"""^RUN pip install\b.*\s["']?\.(\[[\w,]+\])?["']?(\s|$)""", text, re.M), (
        "the Dockerfile does not pip install the package from the repository"
    )
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="affinity-mw")
    assert script.value == "affinity_mw.cli:main"


def test_compose_is_consistent() -> None:
    assert compose_problems(load_compose(), load_image()) == []


def test_kubernetes_is_consistent() -> None:
    assert kubernetes_problems(load_cluster(), load_image()) == []


def test_secret_template_holds_no_usable_secret() -> None:
    template = load_cluster().secret_template
    for value in template["stringData"].values():
        with pytest.raises(ConfigurationError, match="16 characters"):
            Settings.load(environ={"AFFINITY_SECRET": value})


def test_guide_mentions_only_real_options() -> None:
    text = GUIDE.read_text()
    named = set(re.findall(r"\bAFFINITY_[A-Z][A-Z0-9_]*\b", text))
    assert named, "docs/deploy.md names no settings"
    assert named <= OPTION_ENVS, f"docs/deploy.md names unknown settings: {sorted(named - OPTION_ENVS)}"
    dockerfile_envs = set(re.findall(r"\bAFFINITY_[A-Z0-9_]+", DOCKERFILE.read_text()))
    assert dockerfile_envs <= OPTION_ENVS


# ------------------------------------------------------------------- the checks catch a change in one place


def _env_entry(cluster: Cluster, name: str) -> Doc:
    return next(e for e in cluster.container["env"] if e["name"] == name)


def _headless(cluster: Cluster) -> Doc:
    return cluster.one("Service", lambda d: d["spec"].get("clusterIP") == "None")


def _client_service(cluster: Cluster) -> Doc:
    return cluster.one("Service", lambda d: d["spec"].get("clusterIP") != "None")


def _replace_env(cluster: Cluster, entry: Doc) -> None:
    env = cluster.container["env"]
    env[env.index(_env_entry(cluster, entry["name"]))] = entry


def _set_hook(cluster: Cluster, old: str, new: str) -> None:
    command = cluster.container["lifecycle"]["preStop"]["exec"]["command"]
    command[-1] = command[-1].replace(old, new)


K8S_CHANGES: dict[str, Callable[[Cluster], None]] = {
    "headless service renamed": lambda c: _headless(c)["metadata"].update(name="tenants-members"),
    "headless port renamed": lambda c: _headless(c)["spec"]["ports"][0].update(name="web"),
    "headless service published not-ready pods": lambda c: _headless(c)["spec"].update(publishNotReadyAddresses=True),
    "headless service targets another port": lambda c: _headless(c)["spec"]["ports"][0].update(targetPort=9000),
    "client service targets another port": lambda c: _client_service(c)["spec"]["ports"][0].update(targetPort=9000),
    "client service selects other pods": lambda c: _client_service(c)["spec"].update(selector={"app": "other"}),
    "container port changed": lambda c: c.container["ports"][0].update(containerPort=8080),
    "statefulset serviceName changed": lambda c: c.workload["spec"].update(serviceName="tenants"),
    "AFFINITY_DNS names another namespace": lambda c: _env_entry(c, "AFFINITY_DNS").update(
        value="srv:_http._tcp.tenants-peers.default.svc.cluster.local"
    ),
    "POD_NAMESPACE dropped": lambda c: c.container["env"].remove(_env_entry(c, "POD_NAMESPACE")),
    "AFFINITY_DNS misspelled": lambda c: _env_entry(c, "AFFINITY_DNS").update(name="AFFINITY_DSN"),
    "an unknown AFFINITY_ option": lambda c: c.container["env"].append({"name": "AFFINITY_PEER", "value": "x"}),
    "POD_IP dropped": lambda c: c.container["env"].remove(_env_entry(c, "POD_IP")),
    "secret name changed": lambda c: _env_entry(c, "AFFINITY_SECRET")["valueFrom"]["secretKeyRef"].update(name="x"),
    "readiness path changed": lambda c: c.container["readinessProbe"]["httpGet"].update(path="/healthz"),
    "liveness port changed": lambda c: c.container["livenessProbe"]["httpGet"].update(port=9000),
    "health path changed in env only": lambda c: c.container["env"].append(
        {"name": "AFFINITY_HEALTH_PATH", "value": "/status"}
    ),
    "drain port changed": lambda c: _set_hook(c, "127.0.0.1:8000", "127.0.0.1:8080"),
    "drain on another host": lambda c: _set_hook(c, "127.0.0.1", "localhost"),
    "drain replaced by an unsigned request": lambda c: _set_hook(
        c,
        "affinity-mw drain http://127.0.0.1:8000",
        "wget -q --post-data= http://127.0.0.1:8000/_affinity/health/drain",
    ),
    "drain undone instead": lambda c: _set_hook(c, "affinity-mw drain", "affinity-mw drain --undo"),
    "drain signed with a secret on the command line": lambda c: _set_hook(
        c, "affinity-mw drain", "affinity-mw drain --secret deploy-test-secret-0123456789"
    ),
    "drain under another health path": lambda c: _set_hook(
        c, "affinity-mw drain", "AFFINITY_HEALTH_PATH=/status affinity-mw drain"
    ),
    "AFFINITY_SECRET dropped": lambda c: c.container["env"].remove(_env_entry(c, "AFFINITY_SECRET")),
    "AFFINITY_SECRET written in the manifest": lambda c: _replace_env(
        c, {"name": "AFFINITY_SECRET", "value": "x" * 32}
    ),
    "preStop sleep dropped": lambda c: _set_hook(c, "; sleep 15", ""),
    "preStop sleeps only after a successful drain": lambda c: _set_hook(c, "; sleep", " && sleep"),
    "preStop sleeps before draining": lambda c: _set_hook(
        c, "affinity-mw drain http://127.0.0.1:8000; sleep 15", "sleep 15; affinity-mw drain http://127.0.0.1:8000"
    ),
    "preStop sleep outlasts the grace period": lambda c: _set_hook(c, "sleep 15", "sleep 90"),
    "preStop sleep shorter than readiness": lambda c: _set_hook(c, "sleep 15", "sleep 1"),
    "grace period too short": lambda c: c.workload["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=10),
    "pdb selects other pods": lambda c: c.one("PodDisruptionBudget")["spec"].update(
        selector={"matchLabels": {"app": "other"}}
    ),
}


def _service(compose: Doc, name: str) -> Doc:
    return compose["services"][name]  # type: ignore[no-any-return]


def _rename_service(compose: Doc, old: str, new: str) -> None:
    compose["services"][new] = compose["services"].pop(old)


COMPOSE_CHANGES: dict[str, Callable[[Doc], None]] = {
    "service renamed": lambda c: _rename_service(c, "node3", "node4"),
    "a node missing from the peers": lambda c: _service(c, "node2")["environment"].update(
        AFFINITY_PEERS="http://node1:8000,http://node2:8000"
    ),
    "peers at another port": lambda c: _service(c, "node1")["environment"].update(
        AFFINITY_PEERS="http://node1:8080,http://node2:8080,http://node3:8080"
    ),
    "self names another node": lambda c: _service(c, "node2")["environment"].update(AFFINITY_SELF="http://node1:8000"),
    "secret written in the file": lambda c: _service(c, "node1")["environment"].update(AFFINITY_SECRET="x" * 32),
    "healthcheck on another port": lambda c: _service(c, "node1")["healthcheck"].update(
        test=[
            "CMD",
            "python",
            "-c",
            "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/_affinity/health')",
        ]
    ),
    "published to another container port": lambda c: _service(c, "node3").update(ports=["127.0.0.1:8003:9000"]),
    "grace shorter than uvicorn's": lambda c: _service(c, "node1").update(stop_grace_period="10s"),
    "misspelled option": lambda c: _service(c, "node1")["environment"].update(AFINITY_DEBUG_HEADERS="1"),
}


@pytest.mark.parametrize("change", list(K8S_CHANGES))
def test_a_kubernetes_change_in_one_place_is_caught(change: str) -> None:
    cluster = copy.deepcopy(load_cluster())
    K8S_CHANGES[change](cluster)
    assert kubernetes_problems(cluster, load_image()), f"{change!r} went unnoticed"


@pytest.mark.parametrize("change", list(COMPOSE_CHANGES))
def test_a_compose_change_in_one_place_is_caught(change: str) -> None:
    compose = copy.deepcopy(load_compose())
    COMPOSE_CHANGES[change](compose)
    assert compose_problems(compose, load_image()), f"{change!r} went unnoticed"


def test_the_drain_url_is_checked_as_the_command_resolves_it() -> None:
    cluster = load_cluster()
    hook = cluster.container["lifecycle"]["preStop"]["exec"]["command"]
    hook[-1] = "affinity-mw drain; sleep 15"  # the command's default URL: http://127.0.0.1:8000
    env = pod_environment(cluster)
    assert prestop_problems(cluster.container, env, 8000) == ([], 15.0)
    problems, _ = prestop_problems(cluster.container, env, 8080)
    assert problems == ["the preStop hook drains http://127.0.0.1:8000, not this pod at http://127.0.0.1:8080"]


@pytest.mark.parametrize(
    "script",
    [
        "affinity-mw drain http://127.0.0.1:8000 || true; sleep 15",
        "affinity-mw drain http://127.0.0.1:8000 >/dev/null 2>&1\nsleep 15",
        "/usr/local/bin/affinity-mw drain http://127.0.0.1:8000; sleep 5; sleep 10s",
    ],
)
def test_equivalent_hooks_pass(script: str) -> None:
    cluster = load_cluster()
    cluster.container["lifecycle"]["preStop"]["exec"]["command"][-1] = script
    assert prestop_problems(cluster.container, pod_environment(cluster), 8000) == ([], 15.0)


def test_a_dockerfile_port_change_is_caught() -> None:
    text = DOCKERFILE.read_text().replace('"--port", "8000"', '"--port", "8080"').replace("EXPOSE 8000", "EXPOSE 8080")
    image = load_image(text)
    assert image.port == 8080
    assert compose_problems(load_compose(), image)
    assert kubernetes_problems(load_cluster(), image)
