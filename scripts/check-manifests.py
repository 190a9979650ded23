#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests under manifests/.

1. Every kustomization renders (`kustomize build`, else `kubectl kustomize`).
2. Every rendered document validates against the Kubernetes OpenAPI schemas of
   each version in K8S_VERSIONS (kubernetes-validate, strict: an unknown field
   is an error, and so is a kind without a schema: our manifests hold no
   CRD-backed kinds).
3. The objects agree with each other and with what the components expect: what
   the API server or the kubelet would refuse only at install time (selectors,
   port names, references to volumes, config maps, secrets, service accounts,
   roles), and the mesh's own wiring (the ZDS socket both DaemonSets share,
   ztunnel's config paths and control-plane address, istiod-lite's trusted
   node account and admin address, the pods' security settings).

Then, unless --no-self-test, the same checks run on copies of manifests/ with
one deliberate mistake each; every copy must fail with the expected message,
so a check that has stopped catching anything is noticed.

With --ztunnel BIN, ztunnel's config file from the ConfigMap is also given to
`BIN --check` (the binary's own validation) and must be accepted.

Usage: scripts/check-manifests.py [--no-self-test] [--ztunnel BIN] [MANIFESTS_DIR]
"""

import argparse
import functools
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml

# libyaml's parser when PyYAML has it (its wheels do): several times faster.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# The oldest version we support (container appArmorProfile is 1.30) and the
# newest the pinned kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", "1.37.0")

# Objects the operator creates before install (docs/kubernetes.md): the CA
# root, never committed.
EXTERNAL = {
    ("Secret", "istio-system", "istiod-lite-ca"),
    ("ConfigMap", "istio-system", "istio-ca-root-cert"),
}
# Kubernetes creates these in every cluster.
BUILTIN_PRIORITY_CLASSES = {"system-node-critical", "system-cluster-critical"}
# istiod-lite's --serving-names default (docs/istiod-lite.md).
DEFAULT_SERVING_NAMES = ["istiod.istio-system.svc", "istiod-lite.istio-system.svc", "localhost"]

WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet"}


class RenderError(Exception):
    pass


# ---------------------------------------------------------------- rendering


@functools.lru_cache(maxsize=None)
def renderer():
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    raise SystemExit("neither kustomize nor kubectl is installed (scripts/install-deps.sh installs kustomize)")


def kustomizations(root):
    """Directories under root holding a Kustomization (not a Component)."""
    found = []
    for path in sorted(root.rglob("kustomization.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        if doc.get("kind", "Kustomization") == "Kustomization":
            found.append(path.parent)
    return found


def render(directory):
    result = subprocess.run(
        renderer() + [str(directory)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RenderError(f"{' '.join(renderer())} {directory} failed: {result.stderr.strip()}")
    return [doc for doc in yaml.load_all(result.stdout, Loader=LOADER) if doc is not None]


# ---------------------------------------------------------------- schemas


@functools.lru_cache(maxsize=None)
def schema_errors(doc_json, version):
    """The schema error of one document (JSON text) at one version, or None.
    Cached: the self-test renders mostly the same documents again."""
    doc = json.loads(doc_json)
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return f"no schema for {doc.get('apiVersion')} {doc.get('kind')} in Kubernetes {version}"
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "(document)"
        return f"Kubernetes {version}: {path}: {e.message}"
    return None


def check_schemas(docs):
    errors = []
    for doc in docs:
        text = json.dumps(doc, sort_keys=True)
        for version in K8S_VERSIONS:
            error = schema_errors(text, version)
            if error:
                errors.append(f"{name_of(doc)}: {error}")
    return errors


# ---------------------------------------------------------------- cross-checks


def name_of(doc):
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')} {ns + '/' if ns else ''}{meta.get('name')}"


def index(docs):
    return {
        (d.get("kind"), (d.get("metadata") or {}).get("namespace"), (d.get("metadata") or {}).get("name")): d
        for d in docs
    }


def pod_templates(docs):
    for d in docs:
        if d.get("kind") in WORKLOAD_KINDS:
            yield d, d["spec"]["template"]


def containers(pod_spec):
    return (pod_spec.get("initContainers") or []) + (pod_spec.get("containers") or [])


def exists(objects, kind, namespace, name):
    return (kind, namespace, name) in objects or (kind, namespace, name) in EXTERNAL


def is_iana_svc_name(name):
    return (
        1 <= len(name) <= 15
        and all(c.islower() or c.isdigit() or c == "-" for c in name)
        and any(c.isalpha() for c in name)
        and not name.startswith("-")
        and not name.endswith("-")
        and "--" not in name
    )


def check_references(docs):
    """What the API server or the kubelet would refuse at install time."""
    errors = []
    objects = index(docs)
    for workload, template in pod_templates(docs):
        where = name_of(workload)
        ns = workload["metadata"].get("namespace")
        labels = (template.get("metadata") or {}).get("labels") or {}
        selector = (workload["spec"].get("selector") or {}).get("matchLabels") or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            errors.append(f"{where}: spec.selector.matchLabels {selector} does not select its own pod template {labels}")
        spec = template["spec"]
        sa = spec.get("serviceAccountName", "default")
        if sa != "default" and not exists(objects, "ServiceAccount", ns, sa):
            errors.append(f"{where}: service account {sa} is not defined")
        pc = spec.get("priorityClassName")
        if pc and pc not in BUILTIN_PRIORITY_CLASSES and not exists(objects, "PriorityClass", None, pc):
            errors.append(f"{where}: priority class {pc} is not defined")
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for v in volumes.values():
            ref = None
            if "configMap" in v:
                ref = ("ConfigMap", v["configMap"]["name"], v["configMap"].get("optional"))
            elif "secret" in v:
                ref = ("Secret", v["secret"]["secretName"], v["secret"].get("optional"))
            if ref and not ref[2] and not exists(objects, ref[0], ns, ref[1]):
                errors.append(f"{where}: volume {v['name']}: {ref[0]} {ref[1]} is not defined (nor created before install)")
        for c in containers(spec):
            cwhere = f"{where} container {c['name']}"
            image = c.get("image", "")
            last = image.rsplit("/", 1)[-1]
            if "@" not in last and ":" not in last:
                errors.append(f"{cwhere}: image {image} has no tag (set it in the kustomization's images:)")
            elif last.endswith(":latest"):
                errors.append(f"{cwhere}: image {image} uses the latest tag")
            for m in c.get("volumeMounts") or []:
                if m["name"] not in volumes:
                    errors.append(f"{cwhere}: volumeMount {m['name']} names no volume of the pod")
            ports = c.get("ports") or []
            names = {p["name"]: p["containerPort"] for p in ports if "name" in p}
            numbers = {p["containerPort"] for p in ports}
            for p in ports:
                if "name" in p and not is_iana_svc_name(p["name"]):
                    errors.append(f"{cwhere}: port name {p['name']!r} is not a valid port name (at most 15 characters, a-z 0-9 -)")
                if not 1 <= p["containerPort"] <= 65535:
                    errors.append(f"{cwhere}: containerPort {p['containerPort']} is out of range")
                if spec.get("hostNetwork") and p.get("hostPort", p["containerPort"]) != p["containerPort"]:
                    errors.append(f"{cwhere}: with hostNetwork, hostPort must equal containerPort")
            for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = c.get(probe_name) or {}
                for handler in ("httpGet", "tcpSocket"):
                    if handler not in probe:
                        continue
                    port = probe[handler]["port"]
                    if isinstance(port, str) and port not in names:
                        errors.append(f"{cwhere}: {probe_name} names port {port!r}, which the container does not declare")
                    if isinstance(port, int) and port not in numbers:
                        errors.append(f"{cwhere}: {probe_name} uses port {port}, which the container does not declare")
            sc = c.get("securityContext") or {}
            added = (sc.get("capabilities") or {}).get("add") or []
            if sc.get("allowPrivilegeEscalation") is False and (sc.get("privileged") or "SYS_ADMIN" in added or "CAP_SYS_ADMIN" in added):
                errors.append(f"{cwhere}: allowPrivilegeEscalation: false cannot go with privileged or SYS_ADMIN (refused by the API server)")
    for d in docs:
        where = name_of(d)
        ns = d["metadata"].get("namespace")
        if d["kind"] == "Service":
            selector = d["spec"].get("selector") or {}
            backends = [
                t for w, t in pod_templates(docs)
                if w["metadata"].get("namespace") == ns
                and selector
                and all(((t.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in selector.items())
            ]
            if not backends:
                errors.append(f"{where}: selector {selector} matches no pod template")
            for port in d["spec"].get("ports") or []:
                if "name" in port and not is_iana_svc_name(port["name"]):
                    errors.append(f"{where}: port name {port['name']!r} is not a valid port name")
                target = port.get("targetPort", port["port"])
                for t in backends:
                    declared = [p for c in t["spec"]["containers"] for p in c.get("ports") or []]
                    if isinstance(target, str) and target not in {p.get("name") for p in declared}:
                        errors.append(f"{where}: port {port.get('name')} targetPort {target!r} is no named port of the pods it selects")
                    if isinstance(target, int) and target not in {p["containerPort"] for p in declared}:
                        errors.append(f"{where}: port {port.get('name')} targetPort {target} is no port of the pods it selects")
        elif d["kind"] == "PodDisruptionBudget":
            selector = d["spec"]["selector"].get("matchLabels") or {}
            if not any(
                w["metadata"].get("namespace") == ns
                and all(((t.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in selector.items())
                for w, t in pod_templates(docs)
            ):
                errors.append(f"{where}: selector {selector} matches no pod template")
        elif d["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            ref = d["roleRef"]
            role_ns = ns if ref["kind"] == "Role" else None
            if not exists(objects, ref["kind"], role_ns, ref["name"]):
                errors.append(f"{where}: roleRef {ref['kind']} {ref['name']} is not defined")
            for s in d.get("subjects") or []:
                if s["kind"] == "ServiceAccount" and not exists(objects, "ServiceAccount", s.get("namespace", ns), s["name"]):
                    errors.append(f"{where}: subject ServiceAccount {s.get('namespace', ns)}/{s['name']} is not defined")
    return errors


def flags(container):
    """`--name=value` and `--name value` arguments of a container, by name."""
    argv = (container.get("command") or []) + (container.get("args") or [])
    out = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            if "=" in arg:
                key, value = arg[2:].split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                key, value = arg[2:], argv[i + 1]
                i += 1
            else:
                key, value = arg[2:], ""
            out[key] = value
        i += 1
    return out


def mounted_at(spec, container, path):
    """The pod volume whose mount in `container` holds `path`, or None."""
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    best = None
    for m in container.get("volumeMounts") or []:
        mount = m["mountPath"].rstrip("/")
        if (path == mount or path.startswith(mount + "/")) and (best is None or len(mount) > len(best[0])):
            best = (mount, volumes.get(m["name"]))
    return best[1] if best else None


def find(docs, kind, name):
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)


def check_mesh(docs):
    """The wiring between istiod-lite, ztunnel and the node agent."""
    errors = []
    istiod = find(docs, "Deployment", "istiod-lite")
    ztunnel = find(docs, "DaemonSet", "ztunnel")
    agent = find(docs, "DaemonSet", "node-agent")
    config_map = find(docs, "ConfigMap", "ztunnel-config")
    missing = [n for n, d in [("Deployment istiod-lite", istiod), ("DaemonSet ztunnel", ztunnel),
                              ("DaemonSet node-agent", agent), ("ConfigMap ztunnel-config", config_map)] if d is None]
    if missing:
        return [f"missing: {', '.join(missing)}"]

    z_spec = ztunnel["spec"]["template"]["spec"]
    z_labels = ztunnel["spec"]["template"]["metadata"].get("labels") or {}
    z = next(c for c in z_spec["containers"] if c["name"] == "ztunnel")
    a_spec = agent["spec"]["template"]["spec"]
    a = next(c for c in a_spec["containers"] if c["name"] == "node-agent")
    i_spec = istiod["spec"]["template"]["spec"]
    i = next(c for c in i_spec["containers"] if c["name"] == "istiod-lite")

    # ztunnel's pod: its own netns, uid 0, exactly the capabilities it needs.
    if z_spec.get("hostNetwork"):
        errors.append("ztunnel: must run in its own pod network namespace (hostNetwork off)")
    if z_labels.get("istio.io/dataplane-mode") != "none":
        errors.append("ztunnel: its pods must be labelled istio.io/dataplane-mode: none")
    sc = z.get("securityContext") or {}
    if sc.get("runAsUser") != 0:
        errors.append("ztunnel: must run as uid 0")
    caps = set((sc.get("capabilities") or {}).get("add") or [])
    if caps != {"NET_ADMIN", "SYS_ADMIN", "NET_RAW"}:
        errors.append(f"ztunnel: capabilities {sorted(caps)}, expected NET_ADMIN, SYS_ADMIN, NET_RAW")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        errors.append("ztunnel: capabilities must drop ALL besides those added")

    # The node agent: host network and PIDs, privileged.
    if not (a_spec.get("hostNetwork") and a_spec.get("hostPID") and (a.get("securityContext") or {}).get("privileged")):
        errors.append("node-agent: needs hostNetwork, hostPID and a privileged container")

    # ztunnel's config file.
    try:
        config = yaml.safe_load(config_map["data"]["config.yaml"])
        proxy = config["proxy"]
    except (KeyError, TypeError, yaml.YAMLError) as e:
        return errors + [f"ConfigMap ztunnel-config: config.yaml does not parse as a ztunnel config: {e}"]
    config_volume = mounted_at(z_spec, z, "/".join(flags(z).get("config", "").split("/")[:-1]))
    if config_volume is None or (config_volume.get("configMap") or {}).get("name") != "ztunnel-config":
        errors.append("ztunnel: --config is not a file of the mounted ConfigMap ztunnel-config")

    # The ZDS socket: the same path for both, on the same host directory.
    socket = ((proxy.get("inpod") or {}).get("socket")) or ""
    agent_socket = flags(a).get("zds-socket", "")
    if socket != agent_socket:
        errors.append(f"ZDS socket: ztunnel connects to {socket!r} but the node agent listens on {agent_socket!r}")
    else:
        directory = socket.rsplit("/", 1)[0]
        zv, av = mounted_at(z_spec, z, socket), mounted_at(a_spec, a, socket)
        z_host = ((zv or {}).get("hostPath") or {}).get("path")
        a_host = ((av or {}).get("hostPath") or {}).get("path")
        if not z_host or z_host != a_host:
            errors.append(f"ZDS socket: {directory} must be the same hostPath in both pods (ztunnel {z_host}, node-agent {a_host})")

    # Control-plane address, credentials and roots.
    cp = ((proxy.get("certificates") or {}).get("controlPlane")) or {}
    xds = proxy.get("xds") or {}
    if not cp.get("impersonate"):
        errors.append("ztunnel: certificates.controlPlane.impersonate must be true in shared mode")
    serving_names = flags(i).get("serving-names")
    serving_names = serving_names.split(",") if serving_names else DEFAULT_SERVING_NAMES
    grpc_port = int(flags(i).get("grpc-listen", "[::]:15012").rsplit(":", 1)[1])
    for section, settings in (("certificates.controlPlane", cp), ("xds", xds)):
        address = settings.get("address", "")
        host_port = address.removeprefix("https://")
        host, _, port = host_port.partition(":")
        parts = host.split(".")
        service = find(docs, "Service", parts[0]) if len(parts) >= 3 and parts[2] == "svc" else None
        if service is None or service["metadata"].get("namespace") != parts[1]:
            errors.append(f"ztunnel {section}.address {address!r}: no Service <name>.<namespace>.svc of that name is rendered")
        else:
            svc_port = next((p for p in service["spec"]["ports"] if str(p["port"]) == port), None)
            if svc_port is None:
                errors.append(f"ztunnel {section}.address {address!r}: Service {parts[0]} has no port {port}")
            elif svc_port.get("targetPort") not in (grpc_port, *[p.get("name") for p in i.get("ports") or [] if p["containerPort"] == grpc_port]):
                errors.append(f"ztunnel {section}.address: Service port {port} does not lead to istiod-lite's gRPC port {grpc_port}")
        server_name = settings.get("serverName") or host
        if server_name not in serving_names:
            errors.append(f"ztunnel {section}.serverName {server_name!r} is not on istiod-lite's serving certificate {serving_names}")
        for key in ("rootCert", "tokenFile"):
            path = settings.get(key)
            if not path or not path.startswith("/"):
                errors.append(f"ztunnel {section}.{key} must be an absolute path into a mounted volume")
                continue
            volume = mounted_at(z_spec, z, path)
            if volume is None:
                errors.append(f"ztunnel {section}.{key} {path}: no volume is mounted there")
            elif key == "tokenFile":
                tokens = [s.get("serviceAccountToken") for s in (volume.get("projected") or {}).get("sources", [])]
                if not any(t and t.get("audience") == "istio-ca" for t in tokens):
                    errors.append(f"ztunnel {section}.tokenFile {path}: not a projected service-account token for the audience istio-ca")

    # The CA trusts ztunnel's service account to ask for its pods' identities.
    trusted = flags(i).get("trusted-node-accounts", "istio-system/ztunnel").split(",")
    z_account = f"{ztunnel['metadata'].get('namespace')}/{z_spec.get('serviceAccountName', 'default')}"
    if z_account not in trusted:
        errors.append(f"istiod-lite --trusted-node-accounts {trusted} does not name ztunnel's service account {z_account}")

    # Probes reach the admin ports only if they listen beyond loopback.
    admin = flags(i).get("admin-listen", "127.0.0.1:15014")
    if admin.rsplit(":", 1)[0] in ("127.0.0.1", "[::1]", "localhost"):
        probed = any(c.get(p) for c in [i] for p in ("readinessProbe", "livenessProbe"))
        if probed or any(p["containerPort"] == int(admin.rsplit(":", 1)[1]) for p in i.get("ports") or []):
            errors.append(f"istiod-lite: admin listens on loopback ({admin}); the kubelet's probes cannot reach it")
    if not flags(i).get("root-cert") or mounted_at(i_spec, i, flags(i)["root-cert"]) is None:
        errors.append("istiod-lite: --root-cert must name a file of a mounted volume (every replica signs with one root)")

    # Drain within the grace period (spec 11).
    grace = z_spec.get("terminationGracePeriodSeconds", 30)
    drain = str(proxy.get("drainDeadline", "5s"))
    seconds = float(drain[:-2]) / 1000 if drain.endswith("ms") else float(drain[:-1]) * {"s": 1, "m": 60}[drain[-1]]
    if seconds >= grace:
        errors.append(f"ztunnel: drainDeadline {drain} is not shorter than terminationGracePeriodSeconds {grace}")
    return errors


def check_tree(root, only=None):
    """Every error found in the manifests under root (or only in the
    kustomization `only`, a directory below it), prefixed by the
    kustomization it was found in."""
    targets = [root / only] if only else kustomizations(root)
    if not targets:
        return [f"{root}: no kustomization.yaml found"]
    errors = []
    for target in targets:
        label = target.relative_to(root)
        try:
            docs = render(target)
        except RenderError as e:
            errors.append(f"{label}: {e}")
            continue
        if not docs:
            errors.append(f"{label}: renders nothing")
            continue
        found = check_schemas(docs) + check_references(docs) + check_mesh(docs)
        errors.extend(f"{label}: {e}" for e in found)
    return errors


def check_ztunnel_config(root, binary):
    """ztunnel's own validation of the config file of every kustomization."""
    errors = []
    for target in kustomizations(root):
        label = target.relative_to(root)
        try:
            config_map = find(render(target), "ConfigMap", "ztunnel-config")
        except RenderError as e:
            errors.append(f"{label}: {e}")
            continue
        if config_map is None:
            errors.append(f"{label}: no ConfigMap ztunnel-config")
            continue
        with tempfile.TemporaryDirectory(prefix="ztunnel-config-") as tmp:
            path = pathlib.Path(tmp) / "config.yaml"
            path.write_text(config_map["data"]["config.yaml"])
            result = subprocess.run([binary, "--config", str(path), "--check"],
                                    capture_output=True, text=True, check=False)
            if result.returncode != 0:
                errors.append(f"{label}: {binary} --check refused the config: {(result.stderr or result.stdout).strip()}")
    return errors


# ---------------------------------------------------------------- self-test

# (what it breaks, file, text to replace (must occur exactly once), replacement,
#  a fragment the failure must contain)
MISTAKES = [
    ("a misspelled field", "base/istiod-lite.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystm: true",
     "'readOnlyRootFilesystm' was unexpected"),
    ("a wrong type", "base/istiod-lite.yaml", "replicas: 2", "replicas: two", "'two' is not of type"),
    ("a missing resource file", "base/kustomization.yaml", "- node-agent.yaml", "- node-agnet.yaml", "node-agnet.yaml: no such file"),
    ("a missing overlay patch", "overlays/dev/kustomization.yaml", "- path: debug-ztunnel.yaml",
     "- path: debug-ztunel.yaml", "debug-ztunel.yaml"),
    ("a kind without a schema", "base/namespace.yaml", "name: istio-system\n",
     "name: istio-system\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n", "no schema for example.com/v1 Widget"),
    ("an untagged image", "base/kustomization.yaml", "- name: ghcr.io/ambit-mesh/ztunnel\n  newTag: 0.1.0\n", "", "has no tag"),
    ("a Service port leading nowhere", "base/istiod-lite.yaml", "    targetPort: tls-xds-ca\n", "    targetPort: grpc\n",
     "targetPort 'grpc'"),
    ("ZDS sockets that differ", "base/ztunnel.yaml", "socket: /var/run/ztunnel/ztunnel.sock", "socket: /var/run/ztunnel/zds.sock",
     "ZDS socket: ztunnel connects to"),
    ("istiod-lite's admin on loopback", "base/istiod-lite.yaml", "--admin-listen=[::]:15014", "--admin-listen=127.0.0.1:15014",
     "admin listens on loopback"),
    ("a wrong token audience", "base/ztunnel.yaml", "audience: istio-ca", "audience: api", "audience istio-ca"),
    ("ztunnel's account not trusted by the CA", "base/istiod-lite.yaml", "--trusted-node-accounts=istio-system/ztunnel",
     "--trusted-node-accounts=istio-system/ztunnel-v2", "does not name ztunnel's service account"),
    ("SYS_ADMIN without privilege escalation", "base/ztunnel.yaml", "allowPrivilegeEscalation: true",
     "allowPrivilegeEscalation: false", "refused by the API server"),
]


def owning_kustomization(root, rel):
    """The directory (relative to root) of the kustomization a file belongs to."""
    directory = (root / rel).parent
    while not (directory / "kustomization.yaml").exists():
        directory = directory.parent
    return directory.relative_to(root)


def self_test(root):
    """Each mistake is checked in the kustomization it is made in only: a
    strategic-merge overlay takes kustomize over a second to render."""
    failures = []
    with tempfile.TemporaryDirectory(prefix="check-manifests-") as tmp:
        for what, rel, old, new, expected in [(None, None, None, None, None)] + MISTAKES:
            copy_root = pathlib.Path(tmp) / "manifests"
            if copy_root.exists():
                shutil.rmtree(copy_root)
            shutil.copytree(root, copy_root)
            if what is None:
                errors = check_tree(copy_root, "base")
                if errors:
                    failures.append("the unchanged copy fails: " + "; ".join(errors))
                continue
            path = copy_root / rel
            text = path.read_text()
            if text.count(old) != 1:
                failures.append(f"{what}: {rel} holds {old!r} {text.count(old)} times, not once; update the self-test")
                continue
            path.write_text(text.replace(old, new))
            errors = check_tree(copy_root, owning_kustomization(copy_root, rel))
            if not any(expected in e for e in errors):
                failures.append(f"{what} ({rel}) was not caught as expected ({expected!r}); errors: {errors}")
            else:
                print(f"  caught {what}")
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default=str(pathlib.Path(__file__).resolve().parent.parent / "manifests"))
    parser.add_argument("--no-self-test", action="store_true")
    parser.add_argument("--ztunnel", metavar="BIN", help="also run BIN --check on ztunnel's config")
    args = parser.parse_args()
    root = pathlib.Path(args.root).resolve()
    if args.ztunnel:
        errors = check_ztunnel_config(root, args.ztunnel)
        if errors:
            print("ztunnel config: FAILED", file=sys.stderr)
            for e in errors:
                print(f"  {e}", file=sys.stderr)
            return 1
        print(f"ztunnel config: accepted by {args.ztunnel} --check")

    print(f"rendering with `{' '.join(renderer())}`, validating against Kubernetes {', '.join(K8S_VERSIONS)}")
    errors = check_tree(root)
    for target in kustomizations(root):
        print(f"  {target.relative_to(root)}")
    if errors:
        print("manifests: FAILED", file=sys.stderr)
        for e in errors:
            print(f"  {e}", file=sys.stderr)
        return 1
    print("manifests: ok")
    if args.no_self_test:
        return 0
    print("self-test: each deliberate mistake must be caught")
    failures = self_test(root)
    if failures:
        print("self-test: FAILED", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    print(f"self-test: ok ({len(MISTAKES)} mistakes caught)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
