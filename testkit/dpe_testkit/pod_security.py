"""Pod Security admission, as the API server's built-in `PodSecurity` plugin enforces it.

A namespace chooses a Pod Security Standards level with its labels
`pod-security.kubernetes.io/enforce` (`privileged`, `baseline` or `restricted`; privileged when
absent) and `pod-security.kubernetes.io/enforce-version` (`latest`, the default, or `v1.N`). A pod
created in it that breaks a check of that level is refused with 403 Forbidden; the `warn` labels
(which default to the enforce level) make the create of a pod, or of a workload whose pod template
breaks them, answer with a `Warning` header instead. The checks, their order, and their reasons and
details are those of k8s.io/pod-security-admission (policy/check_*.go), so a refusal reads as a real
one does:

    pods "x" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false
    (container "stage" must set securityContext.allowPrivilegeEscalation=false), ...

Versions: each check applies from the version that introduced it, and `latest` is every check of
the newest version; differences inside a check across versions are kept where they change a verdict
(the allowed sysctls and SELinux types, the `hostUsers: false` and Windows relaxations).
Not emulated: audit annotations, exemptions (users, namespaces, runtime classes), the dry run of the
namespace's pods when its enforce label tightens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

PREFIX = "pod-security.kubernetes.io/"
ENFORCE, ENFORCE_VERSION = PREFIX + "enforce", PREFIX + "enforce-version"
AUDIT, AUDIT_VERSION = PREFIX + "audit", PREFIX + "audit-version"
WARN, WARN_VERSION = PREFIX + "warn", PREFIX + "warn-version"
LEVELS = ("privileged", "baseline", "restricted")
LATEST = 10**6
"""The minor version `latest` stands for: newer than any check."""

Pod = Mapping[str, Any]
Result = tuple[str, str]
"""(forbidden reason, forbidden detail) of one failed check."""


# ---------------------------------------------------------------------------------------------
# The namespace's policy


@dataclass(frozen=True)
class LevelVersion:
    level: str
    minor: int = LATEST

    def __str__(self) -> str:
        return f"{self.level}:{'latest' if self.minor == LATEST else f'v1.{self.minor}'}"


@dataclass(frozen=True)
class Policy:
    enforce: LevelVersion
    warn: LevelVersion
    errors: tuple[str, ...] = ()
    """Field errors of invalid labels, as `metadata.labels[KEY]: Invalid value: "V": ...`."""


def _level(labels: Mapping[str, str], key: str, errors: list[str], invalid: str) -> str | None:
    if key not in labels:
        return None
    value = labels[key]
    if value in LEVELS:
        return value
    errors.append(f'metadata.labels[{key}]: Invalid value: "{value}": must be one of {", ".join(LEVELS)}')
    return invalid


def _version(labels: Mapping[str, str], key: str, errors: list[str]) -> int | None:
    if key not in labels:
        return None
    value = labels[key]
    if value == "latest":
        return LATEST
    match = re.fullmatch(r"v1\.(0|[1-9][0-9]*)", value)
    if match is None:
        errors.append(f'metadata.labels[{key}]: Invalid value: "{value}": must be "latest" or "v1.x"')
        return LATEST
    return int(match.group(1))


def policy(labels: Mapping[str, str] | None) -> Policy:
    """The policy a namespace's labels ask for (api.PolicyToEvaluate): an invalid enforce level
    enforces `restricted` (fail closed), an invalid warn level warns of nothing (fail open)."""
    labels = labels or {}
    errors: list[str] = []
    enforce_level = _level(labels, ENFORCE, errors, invalid="restricted")
    enforce_minor = _version(labels, ENFORCE_VERSION, errors)
    enforce = LevelVersion(enforce_level or "privileged", LATEST if enforce_minor is None else enforce_minor)
    _level(labels, AUDIT, errors, invalid="privileged")
    _version(labels, AUDIT_VERSION, errors)
    warn_level = _level(labels, WARN, errors, invalid="privileged")
    warn_minor = _version(labels, WARN_VERSION, errors)
    warn = LevelVersion(warn_level or "privileged", LATEST if warn_minor is None else warn_minor)
    valid_enforce = enforce_level is not None and labels[ENFORCE] in LEVELS
    if warn_level is None and valid_enforce and LEVELS.index(enforce.level) > LEVELS.index(warn.level):
        warn = LevelVersion(enforce.level, warn_minor if warn_minor is not None else enforce.minor)
    return Policy(enforce, warn, tuple(errors))


# ---------------------------------------------------------------------------------------------
# The checks (k8s.io/pod-security-admission/policy), each (pod, minor version) -> failure or None


def _quote(items: list[str]) -> str:
    return ", ".join(f'"{item}"' for item in items)


def _plural(singular: str, plural: str, count: int) -> str:
    return singular if count == 1 else plural


def _containers(pod: Pod) -> Iterator[Mapping[str, Any]]:
    spec = pod.get("spec") or {}
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or []


def _sc(owner: Mapping[str, Any]) -> Mapping[str, Any]:
    return owner.get("securityContext") or {}


def _pod_sc(pod: Pod) -> Mapping[str, Any]:
    return _sc(pod.get("spec") or {})


def _named(what: str, names: list[str]) -> str:
    return f"{_plural(what, what + 's', len(names))} {_quote(names)}"


def _setters(pod_bad: bool, containers: list[str]) -> list[str]:
    return (["pod"] if pod_bad else []) + ([_named("container", containers)] if containers else [])


def _windows(pod: Pod) -> bool:
    return ((pod.get("spec") or {}).get("os") or {}).get("name") == "windows"


def _user_namespace(pod: Pod) -> bool:
    return (pod.get("spec") or {}).get("hostUsers") is False


def check_app_armor(pod: Pod, minor: int) -> Result | None:
    allowed = ("RuntimeDefault", "Localhost")
    bad_values: set[str] = set()
    pod_profile = _pod_sc(pod).get("appArmorProfile")
    pod_bad = pod_profile is not None and pod_profile.get("type") not in allowed
    if pod_bad:
        bad_values.add(str(pod_profile.get("type", "")))
    containers = []
    for container in _containers(pod):
        profile = _sc(container).get("appArmorProfile")
        if profile is not None and profile.get("type") not in allowed:
            containers.append(container["name"])
            bad_values.add(str(profile.get("type", "")))
    setters = _setters(pod_bad, containers)
    values = sorted(bad_values)
    prefix = "container.apparmor.security.beta.kubernetes.io/"
    annotations = sorted(f'{key}="{value}"' for key, value in ((pod.get("metadata") or {}).get("annotations") or {}).items()
                         if key.startswith(prefix) and not (value in ("", "runtime/default") or value.startswith("localhost/")))
    if annotations:
        values += annotations
        setters.append(_plural("annotation", "annotations", len(annotations)))
    if not setters:
        return None
    return (_plural("forbidden AppArmor profile", "forbidden AppArmor profiles", len(values)),
            f"{' and '.join(setters)} must not set AppArmor profile type to {_quote(values)}")


BASELINE_CAPABILITIES = frozenset({"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                                   "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})


def check_capabilities_baseline(pod: Pod, minor: int) -> Result | None:
    containers, added = [], set()
    for container in _containers(pod):
        bad = [c for c in (_sc(container).get("capabilities") or {}).get("add") or [] if c not in BASELINE_CAPABILITIES]
        if bad:
            containers.append(container["name"])
            added.update(bad)
    if not containers:
        return None
    return "non-default capabilities", f"{_named('container', containers)} must not include {_quote(sorted(added))} in securityContext.capabilities.add"


def check_host_namespaces(pod: Pod, minor: int) -> Result | None:
    spec = pod.get("spec") or {}
    shared = [f"{key}=true" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    return ("host namespaces", ", ".join(shared)) if shared else None


def check_host_path_volumes(pod: Pod, minor: int) -> Result | None:
    volumes = [v["name"] for v in (pod.get("spec") or {}).get("volumes") or [] if v.get("hostPath") is not None]
    return ("hostPath volumes", _named("volume", volumes)) if volumes else None


def check_host_ports(pod: Pod, minor: int) -> Result | None:
    containers, ports = [], set()
    for container in _containers(pod):
        used = [str(p["hostPort"]) for p in container.get("ports") or [] if p.get("hostPort")]
        if used:
            containers.append(container["name"])
            ports.update(used)
    if not containers:
        return None
    uses = _plural("uses", "use", len(containers))
    return "hostPort", f"{_named('container', containers)} {uses} {_plural('hostPort', 'hostPorts', len(ports))} {', '.join(sorted(ports))}"


def check_host_probes(pod: Pod, minor: int) -> Result | None:
    containers, hosts = set(), set()
    for container in _containers(pod):
        handlers = [container.get(key) for key in ("livenessProbe", "readinessProbe", "startupProbe")]
        handlers += [(container.get("lifecycle") or {}).get(key) for key in ("postStart", "preStop")]
        for handler in handlers:
            for kind in ("httpGet", "tcpSocket"):
                host = ((handler or {}).get(kind) or {}).get("host")
                if host:
                    containers.add(container["name"])
                    hosts.add(host)
    if not containers:
        return None
    uses = _plural("uses", "use", len(containers))
    what = _plural("probe or lifecycle host", "probe or lifecycle hosts", len(hosts))
    return "probe or lifecycle host", f"{_named('container', sorted(containers))} {uses} {what} {_quote(sorted(hosts))}"


def check_privileged(pod: Pod, minor: int) -> Result | None:
    containers = [c["name"] for c in _containers(pod) if _sc(c).get("privileged")]
    return ("privileged", f"{_named('container', containers)} must not set securityContext.privileged=true") if containers else None


def check_proc_mount(pod: Pod, minor: int) -> Result | None:
    containers, types = [], set()
    for container in _containers(pod):
        mount = _sc(container).get("procMount")
        if mount is not None and mount != "Default":
            containers.append(container["name"])
            types.add(mount)
    if not containers:
        return None
    return "procMount", f"{_named('container', containers)} must not set securityContext.procMount to {_quote(sorted(types))}"


def check_proc_mount_baseline(pod: Pod, minor: int) -> Result | None:
    return None if minor >= 35 and _user_namespace(pod) else check_proc_mount(pod, minor)


def check_se_linux(pod: Pod, minor: int) -> Result | None:
    allowed = {"", "container_t", "container_init_t", "container_kvm_t"} | ({"container_engine_t"} if minor >= 31 else set())
    bad_types: set[str] = set()
    found = {"user": False, "role": False}

    def valid(options: Mapping[str, Any]) -> bool:
        ok = options.get("type", "") in allowed
        if not ok:
            bad_types.add(options.get("type", ""))
        for key in found:
            if options.get(key):
                found[key], ok = True, False
        return ok

    pod_options = _pod_sc(pod).get("seLinuxOptions")
    pod_bad = pod_options is not None and not valid(pod_options)
    containers = [c["name"] for c in _containers(pod) if _sc(c).get("seLinuxOptions") is not None and not valid(_sc(c)["seLinuxOptions"])]
    setters = _setters(pod_bad, containers)
    if not setters:
        return None
    data = ([f"{_plural('type', 'types', len(bad_types))} {_quote(sorted(bad_types))}"] if bad_types else [])
    data += [f"{key} may not be set" for key, seen in found.items() if seen]
    return "seLinuxOptions", f"{' and '.join(setters)} set forbidden securityContext.seLinuxOptions: {'; '.join(data)}"


def _seccomp_valid(profile: Mapping[str, Any]) -> bool:
    return profile.get("type") in ("RuntimeDefault", "Localhost")


def check_seccomp_baseline(pod: Pod, minor: int) -> Result | None:
    if minor < 19:
        return None  # the alpha annotations, which nobody writes any more
    pod_profile = _pod_sc(pod).get("seccompProfile")
    values: set[str] = set()
    pod_bad = pod_profile is not None and not _seccomp_valid(pod_profile)
    if pod_bad:
        values.add(str(pod_profile.get("type", "")))
    containers = []
    for container in _containers(pod):
        profile = _sc(container).get("seccompProfile")
        if profile is not None and not _seccomp_valid(profile):
            containers.append(container["name"])
            values.add(str(profile.get("type", "")))
    setters = _setters(pod_bad, containers)
    if not setters:
        return None
    return "seccompProfile", f"{' and '.join(setters)} must not set securityContext.seccompProfile.type to {_quote(sorted(values))}"


SAFE_SYSCTLS = (
    (0, ("kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range",
         "net.ipv4.ip_unprivileged_port_start")),
    (27, ("net.ipv4.ip_local_reserved_ports",)),
    (29, ("net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes")),
    (32, ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem")),
    (37, ("net.ipv4.tcp_slow_start_after_idle", "net.ipv4.tcp_notsent_lowat")),
)


def check_sysctls(pod: Pod, minor: int) -> Result | None:
    safe = {name for since, names in SAFE_SYSCTLS if minor >= since for name in names}
    bad = [s["name"] for s in _pod_sc(pod).get("sysctls") or [] if s.get("name") not in safe]
    return ("forbidden sysctls", ", ".join(bad)) if bad else None


def check_windows_host_process(pod: Pod, minor: int) -> Result | None:
    pod_bad = bool((_pod_sc(pod).get("windowsOptions") or {}).get("hostProcess"))
    containers = [c["name"] for c in _containers(pod) if (_sc(c).get("windowsOptions") or {}).get("hostProcess")]
    setters = _setters(pod_bad, containers)
    if not setters:
        return None
    return "hostProcess", f"{' and '.join(setters)} must not set securityContext.windowsOptions.hostProcess=true"


def check_allow_privilege_escalation(pod: Pod, minor: int) -> Result | None:
    if minor >= 25 and _windows(pod):
        return None
    containers = [c["name"] for c in _containers(pod) if _sc(c).get("allowPrivilegeEscalation") is not False]
    if not containers:
        return None
    return "allowPrivilegeEscalation != false", f"{_named('container', containers)} must set securityContext.allowPrivilegeEscalation=false"


def check_capabilities_restricted(pod: Pod, minor: int) -> Result | None:
    if minor >= 25 and _windows(pod):
        return None
    missing_drop, adding, added = [], [], set()
    for container in _containers(pod):
        capabilities = _sc(container).get("capabilities")
        if capabilities is None:
            missing_drop.append(container["name"])
            continue
        if "ALL" not in (capabilities.get("drop") or []):
            missing_drop.append(container["name"])
        bad = [c for c in capabilities.get("add") or [] if c != "NET_BIND_SERVICE"]
        if bad:
            adding.append(container["name"])
            added.update(bad)
    details = []
    if missing_drop:
        details.append(f'{_named("container", missing_drop)} must set securityContext.capabilities.drop=["ALL"]')
    if adding:
        details.append(f"{_named('container', adding)} must not include {_quote(sorted(added))} in securityContext.capabilities.add")
    return ("unrestricted capabilities", "; ".join(details)) if details else None


def check_proc_mount_restricted(pod: Pod, minor: int) -> Result | None:
    return check_proc_mount(pod, minor)


RESTRICTED_VOLUME_SOURCES = frozenset({"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image", "persistentVolumeClaim",
                                       "projected", "secret"})


def check_restricted_volumes(pod: Pod, minor: int) -> Result | None:
    volumes, types = [], set()
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        sources = [key for key, value in volume.items() if key != "name" and value is not None]
        if any(source in RESTRICTED_VOLUME_SOURCES for source in sources):
            continue
        volumes.append(volume["name"])
        types.add(sources[0] if sources else "unknown")
    if not volumes:
        return None
    uses = _plural("uses", "use", len(volumes))
    what = _plural("restricted volume type", "restricted volume types", len(types))
    return "restricted volume types", f"{_named('volume', volumes)} {uses} {what} {_quote(sorted(types))}"


def check_run_as_non_root(pod: Pod, minor: int) -> Result | None:
    if minor >= 35 and _user_namespace(pod):
        return None
    pod_value = _pod_sc(pod).get("runAsNonRoot")
    explicit, implicit = [], []
    for container in _containers(pod):
        value = _sc(container).get("runAsNonRoot")
        if value is not None:
            if not value:
                explicit.append(container["name"])
        elif pod_value is not True:
            implicit.append(container["name"])
    setters = _setters(pod_value is False, explicit)
    if setters:
        return "runAsNonRoot != true", f"{' and '.join(setters)} must not set securityContext.runAsNonRoot=false"
    if implicit:
        return "runAsNonRoot != true", f"pod or {_named('container', implicit)} must set securityContext.runAsNonRoot=true"
    return None


def check_run_as_user(pod: Pod, minor: int) -> Result | None:
    if minor >= 35 and _user_namespace(pod):
        return None
    containers = [c["name"] for c in _containers(pod) if _sc(c).get("runAsUser") == 0]
    setters = _setters(_pod_sc(pod).get("runAsUser") == 0, containers)
    return ("runAsUser=0", f"{' and '.join(setters)} must not set runAsUser=0") if setters else None


def check_seccomp_restricted(pod: Pod, minor: int) -> Result | None:
    if minor >= 25 and _windows(pod):
        return None
    pod_profile = _pod_sc(pod).get("seccompProfile")
    values: set[str] = set()
    pod_bad = pod_profile is not None and not _seccomp_valid(pod_profile)
    if pod_bad:
        values.add(str(pod_profile.get("type", "")))
    pod_set = pod_profile is not None and not pod_bad
    explicit, implicit = [], []
    for container in _containers(pod):
        profile = _sc(container).get("seccompProfile")
        if profile is not None:
            if not _seccomp_valid(profile):
                explicit.append(container["name"])
                values.add(str(profile.get("type", "")))
        elif not pod_set:
            implicit.append(container["name"])
    setters = _setters(pod_bad, explicit)
    if setters:
        return "seccompProfile", f"{' and '.join(setters)} must not set securityContext.seccompProfile.type to {_quote(sorted(values))}"
    if implicit:
        allowed = '"RuntimeDefault" or "Localhost"'
        return "seccompProfile", f"pod or {_named('container', implicit)} must set securityContext.seccompProfile.type to {allowed}"
    return None


@dataclass(frozen=True)
class Check:
    id: str
    level: str
    since: int
    run: Callable[[Pod, int], Result | None]
    overrides: tuple[tuple[int, str], ...] = ()
    """(from minor, baseline check id) this restricted check replaces."""


CHECKS = (
    Check("appArmorProfile", "baseline", 0, check_app_armor),
    Check("capabilities_baseline", "baseline", 0, check_capabilities_baseline),
    Check("hostNamespaces", "baseline", 0, check_host_namespaces),
    Check("hostPathVolumes", "baseline", 0, check_host_path_volumes),
    Check("hostPorts", "baseline", 0, check_host_ports),
    Check("hostProbesAndHostLifecycle", "baseline", 34, check_host_probes),
    Check("privileged", "baseline", 0, check_privileged),
    Check("procMount", "baseline", 0, check_proc_mount_baseline),
    Check("seLinuxOptions", "baseline", 0, check_se_linux),
    Check("seccompProfile_baseline", "baseline", 0, check_seccomp_baseline),
    Check("sysctls", "baseline", 0, check_sysctls),
    Check("windowsHostProcess", "baseline", 0, check_windows_host_process),
    Check("allowPrivilegeEscalation", "restricted", 8, check_allow_privilege_escalation),
    Check("capabilities_restricted", "restricted", 22, check_capabilities_restricted, ((22, "capabilities_baseline"),)),
    Check("procMount_restricted", "restricted", 35, check_proc_mount_restricted, ((35, "procMount"),)),
    Check("restrictedVolumes", "restricted", 0, check_restricted_volumes, ((0, "hostPathVolumes"),)),
    Check("runAsNonRoot", "restricted", 0, check_run_as_non_root),
    Check("runAsUser", "restricted", 23, check_run_as_user),
    Check("seccompProfile_restricted", "restricted", 19, check_seccomp_restricted, ((19, "seccompProfile_baseline"),)),
)
"""Baseline checks, then restricted ones, each in the order of their ids, as the registry runs them."""


def evaluate(pod: Pod, level: LevelVersion) -> list[Result]:
    """Every failed check of `level` for a pod (or the metadata and spec of a pod template)."""
    if level.level == "privileged":
        return []
    wanted = [c for c in CHECKS if c.since <= level.minor and (c.level == "baseline" or level.level == "restricted")]
    replaced = {old for c in wanted if c.level == "restricted" for since, old in c.overrides if since <= level.minor}
    return [result for c in wanted if c.id not in replaced and (result := c.run(pod, level.minor)) is not None]


def describe(results: list[Result]) -> str:
    """The aggregate detail: `reason (detail), reason (detail)`."""
    return ", ".join(f"{reason} ({detail})" if detail else reason for reason, detail in results)


def refusal(pod: Pod, namespace_labels: Mapping[str, str] | None) -> str | None:
    """Why a pod may not be created in a namespace with these labels, after `pods "NAME" is forbidden: `; or None."""
    enforce = policy(namespace_labels).enforce
    results = evaluate(pod, enforce)
    return f'violates PodSecurity "{enforce}": {describe(results)}' if results else None


def warning(pod: Pod, namespace_labels: Mapping[str, str] | None) -> str | None:
    """The `Warning` an allowed create of a pod, or of a workload with this pod template, gets; or None."""
    warn = policy(namespace_labels).warn
    results = evaluate(pod, warn)
    return f'would violate PodSecurity "{warn}": {describe(results)}' if results else None


POD_TEMPLATES = {
    "ReplicationController": ("spec", "template"), "PodTemplate": ("template",), "ReplicaSet": ("spec", "template"),
    "Deployment": ("spec", "template"), "StatefulSet": ("spec", "template"), "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"), "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
"""Where the workloads the plugin checks (for warnings only) keep their pod template."""


def pod_template(obj: Mapping[str, Any]) -> Pod | None:
    found: Any = obj
    for key in POD_TEMPLATES.get(str(obj.get("kind")), ("-",)):
        found = (found or {}).get(key) if isinstance(found, Mapping) else None
    return found if isinstance(found, Mapping) else None
