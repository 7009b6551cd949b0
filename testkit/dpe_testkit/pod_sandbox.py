"""Turn the current process into one container of a pod, then exec the container's command.

The node agent (`support.node_agent`) starts this script as root in fresh mount, UTS and PID
namespaces (`unshare`), with one argument: a JSON file describing the container (`ContainerSpec`).
It builds the container's root filesystem the way a container runtime does, from the host itself:

- the image is the host's root, under an overlay whose upper layer is the container's own, so the
  container writes where it likes and the host never changes (read-only when the container asks);
- host paths the image needs (the Python environment, the project) are bound in read-only; the
  image's own paths (the virtual environment at /opt/dpe) are bound from where they live here, and
  its user is added to /etc/passwd and /etc/group as its `useradd` step would;
- the pod's volumes at their mount paths, a private /dev (null, zero, random, a per-container
  /dev/termination-log, a memory-backed /dev/shm), a fresh /proc, the pod's /etc/hosts;
- the pod's hostname; the container's capability bounding set and no_new_privs, as the runtime
  sets them (`kubelet_security`); then its user and groups, working directory, environment, argv.

It only ever runs inside its own namespaces, so nothing it mounts is visible outside.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}
OLD_ROOT = ".oldroot"
EXEC_FAILURE = 128
"""Exit status of a container whose command could not be started (the runtime's StartError)."""
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def inside(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def bind(source: str, target: Path, read_only: bool, directory: bool = True) -> None:
    if directory:
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch(exist_ok=True)
    mount("--rbind", source, str(target))
    if read_only:
        mount("-o", "remount,bind,ro", str(target))


def private_dev(root: Path, spec: dict[str, Any]) -> None:
    dev = inside(root, "/dev")
    dev.mkdir(exist_ok=True)
    mount("-t", "tmpfs", "-o", "mode=755,nosuid", "tmpfs", str(dev))
    for name in DEVICES:
        bind(f"/dev/{name}", dev / name, read_only=False, directory=False)
    for name, target in DEV_LINKS.items():
        (dev / name).symlink_to(target)
    (dev / "pts").mkdir()
    (dev / "shm").mkdir(mode=0o1777)
    mount("-t", "tmpfs", "-o", "mode=1777,size=64m", "tmpfs", str(dev / "shm"))
    bind(spec["terminationLog"], dev / "termination-log", read_only=False, directory=False)


def build_root(spec: dict[str, Any]) -> Path:
    root = Path(spec["root"])
    mount("--make-rprivate", "/")
    mount("-t", "overlay", "overlay", "-o", f"lowerdir=/,upperdir={spec['upper']},workdir={spec['work']}", str(root))
    for path in spec["traversable"]:
        # An image's files are readable by its user; here some host ancestors (a root-only home) are not.
        for ancestor in [inside(root, path), *inside(root, path).parents]:
            if ancestor == root.parent:
                break
            ancestor.chmod(ancestor.stat().st_mode | 0o005)
    for image_path, host_path in spec["imagePaths"].items():
        bind(host_path, inside(root, image_path), read_only=True)
    for database, line in (("passwd", spec["passwd"]), ("group", spec["group"])):
        with inside(root, f"/etc/{database}").open("a") as handle:
            handle.write(line + "\n")
    for entry in spec["ownedDirs"]:
        directory = inside(root, entry["path"])
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, entry["uid"], entry["gid"])
    inside(root, "/proc").mkdir(exist_ok=True)
    mount("-t", "proc", "proc", str(inside(root, "/proc")))
    bind("/sys", inside(root, "/sys"), read_only=False)
    private_dev(root, spec)
    for file in spec["files"]:
        bind(file["source"], inside(root, file["target"]), read_only=True, directory=False)
    for volume in spec["mounts"]:
        target = inside(root, volume["target"])
        if volume["type"] == "tmpfs":
            target.mkdir(parents=True, exist_ok=True)
            # With an fsGroup the kubelet makes the volume the group's, group-writable and setgid.
            options = "mode=1777" if volume.get("gid") is None else f"mode=3777,gid={volume['gid']}"
            options += f",size={volume['size']}" if volume.get("size") else ""
            mount("-t", "tmpfs", "-o", options, "tmpfs", str(target))
        else:
            bind(volume["source"], target, read_only=volume["readOnly"])
    # After the volumes: a pod's /tmp must not hide the interpreter and sources when they live there.
    for path in spec["hostPaths"]:
        bind(path, inside(root, path), read_only=True)
    (root / OLD_ROOT).mkdir(exist_ok=True)
    if spec["readOnlyRoot"]:
        mount("-o", "remount,ro", str(root))
    return root


def enter(root: Path) -> None:
    """pivot_root into the new root and let the host's root go."""
    os.chdir(root)
    subprocess.run(["pivot_root", ".", OLD_ROOT], check=True)
    os.chdir("/")
    subprocess.run(["umount", "-l", f"/{OLD_ROOT}"], check=True)


def restrict(spec: dict[str, Any]) -> None:
    """The runtime's capability bounding set ({name: number}; None: all of them) and no_new_privs, before
    the user changes (a non-root user then has no capabilities; root keeps those of the bounding set)."""
    libc = ctypes.CDLL(None, use_errno=True)
    kept = spec.get("capabilities")
    if kept is not None:
        allowed = set(kept.values())
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        for number in range(last + 1):
            if number not in allowed and libc.prctl(PR_CAPBSET_DROP, number, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), f"PR_CAPBSET_DROP {number}")
    if spec.get("noNewPrivs") and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    root = build_root(spec)
    enter(root)
    socket.sethostname(spec["hostname"])
    restrict(spec)
    os.setgroups(spec["groups"])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    try:
        os.chdir(spec["workingDir"])
    except OSError as error:
        print(f"container start failed: chdir to {spec['workingDir']}: {error.strerror}", file=sys.stderr)
        sys.exit(EXEC_FAILURE)
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as error:
        print(f'container start failed: exec: "{argv[0]}": {error.strerror}', file=sys.stderr)
        sys.exit(EXEC_FAILURE)


if __name__ == "__main__":
    main(sys.argv[1])
