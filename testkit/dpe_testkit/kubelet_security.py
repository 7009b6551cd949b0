"""A container's security context as the kubelet and the container runtime (containerd) apply it.

For the node agent (`node_agent`) and its sandbox (`pod_sandbox`):

- the effective context: the pod's `securityContext`, overridden field by field by the container's
  (`DetermineEffectiveSecurityContext`);
- the user: `runAsUser`, else the image's user; the group: `runAsGroup`, else the primary group of
  that uid in the container's /etc/passwd, else 0 (the runtime looks the uid up; the group of the
  image's `USER uid:gid` is not used, as on a real node); supplementary groups: that group,
  `supplementalGroups` and `fsGroup`;
- `runAsNonRoot`: refused as the kubelet refuses it (`verifyRunAsNonRoot`), a
  CreateContainerConfigError with the kubelet's message;
- capabilities: the bounding set is the runtime's default set (or everything for a privileged
  container), plus `add`, less `drop` (`ALL` drops every one); `allowPrivilegeEscalation: false`
  sets no_new_privs, as the runtime does;
- `fsGroup`: volumes are group-owned by it, group-writable (read-only ones group-readable) and
  setgid on directories (`SetVolumeOwnership`).

Not applied: seccomp and AppArmor profiles, SELinux options, procMount, sysctls.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

RUNTIME_DEFAULT_CAPABILITIES = ("AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                                "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT")
"""The capabilities containerd gives a container that asks for none (oci.defaultUnixCaps)."""
POD_LEVEL = ("seLinuxOptions", "windowsOptions", "runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile", "appArmorProfile")
"""Fields a pod's securityContext sets for its containers (each container's own value wins)."""


class ContainerConfigError(Exception):
    """The kubelet will not create the container (its CreateContainerConfigError message)."""


def effective(pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, Any]:
    """The container's effective security context: pod-level fields, then the container's own."""
    pod_context = pod["spec"].get("securityContext") or {}
    result = {key: pod_context[key] for key in POD_LEVEL if pod_context.get(key) is not None}
    result.update({key: value for key, value in (container.get("securityContext") or {}).items() if value is not None})
    return result


def primary_group(uid: int, passwd: Iterable[str]) -> int:
    """The group of `uid` as the runtime finds it in the container's /etc/passwd (first match), else 0."""
    for line in passwd:
        fields = line.strip().split(":")
        if len(fields) >= 4 and fields[2] == str(uid):
            try:
                return int(fields[3])
            except ValueError:
                return 0
    return 0


def verify_run_as_non_root(pod: Mapping[str, Any], container: Mapping[str, Any], context: Mapping[str, Any], image_uid: int) -> None:
    """The kubelet's verifyRunAsNonRoot: raise ContainerConfigError with its message."""
    if not context.get("runAsNonRoot"):
        return
    meta = pod["metadata"]
    where = f'(pod: "{meta["name"]}_{meta["namespace"]}({meta.get("uid", "")})", container: {container["name"]})'
    if context.get("runAsUser") is not None:
        if context["runAsUser"] == 0:
            raise ContainerConfigError(f"container's runAsUser breaks non-root policy {where}")
        return
    if image_uid == 0:
        raise ContainerConfigError(f"container has runAsNonRoot and image will run as root {where}")


def capabilities(context: Mapping[str, Any]) -> list[str] | None:
    """The container's bounding set (capability names without CAP_), or None for every capability."""
    if context.get("privileged"):
        return None
    asked = context.get("capabilities") or {}
    names = {name.upper().removeprefix("CAP_") for name in asked.get("add") or []}
    dropped = {name.upper().removeprefix("CAP_") for name in asked.get("drop") or []}
    if "ALL" in names:
        return None if not dropped else sorted(set(CAPABILITY_NUMBERS) - dropped)
    kept = set() if "ALL" in dropped else set(RUNTIME_DEFAULT_CAPABILITIES) - dropped
    return sorted(kept | names)


def no_new_privileges(context: Mapping[str, Any]) -> bool:
    """The kubelet's AddNoNewPrivileges: only an explicit `allowPrivilegeEscalation: false`, not privileged."""
    return not context.get("privileged") and context.get("allowPrivilegeEscalation") is False


def container_security(pod: Mapping[str, Any], container: Mapping[str, Any], image_uid: int, passwd: list[str]) -> dict[str, Any]:
    """What the sandbox needs: uid, gid, groups, readOnlyRoot, capabilities (the bounding set, {name: number}, None
    for all), noNewPrivs; ContainerConfigError when the kubelet refuses to create the container."""
    context = effective(pod, container)
    verify_run_as_non_root(pod, container, context, image_uid)
    uid = context.get("runAsUser", image_uid)
    gid = context["runAsGroup"] if context.get("runAsGroup") is not None else primary_group(uid, passwd)
    pod_context = pod["spec"].get("securityContext") or {}
    fs_group = pod_context.get("fsGroup")
    groups = sorted({gid, *(pod_context.get("supplementalGroups") or []), *([fs_group] if fs_group is not None else [])})
    kept = capabilities(context)
    return {"uid": uid, "gid": gid, "groups": groups, "readOnlyRoot": bool(context.get("readOnlyRootFilesystem")),
            "capabilities": None if kept is None else {name: CAPABILITY_NUMBERS[name] for name in kept if name in CAPABILITY_NUMBERS},
            "noNewPrivs": no_new_privileges(context)}


def own_volume(path: Path, fs_group: int | None, read_only: bool) -> None:
    """The kubelet's SetVolumeOwnership: everything in a volume group-owned by fsGroup, with group access."""
    if fs_group is None:
        return
    mask = 0o440 if read_only else 0o660
    for root, _, files in os.walk(path):
        for target in [Path(root), *(Path(root) / name for name in files)]:
            os.lchown(target, -1, fs_group)
            if not target.is_symlink():
                extra = mask | (0o2000 | 0o110 if target.is_dir() else 0)
                target.chmod((target.lstat().st_mode & 0o7777) | extra)


CAPABILITY_NUMBERS = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6, "SETUID": 7, "SETPCAP": 8,
    "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10, "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15,
    "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20, "SYS_ADMIN": 21, "SYS_BOOT": 22,
    "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25, "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29,
    "AUDIT_CONTROL": 30, "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35, "BLOCK_SUSPEND": 36,
    "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}
"""Linux capability numbers (linux/capability.h), for the sandbox's PR_CAPBSET_DROP."""
