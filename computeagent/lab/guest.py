"""A real, tiny Linux guest for the lab: built once, cached, and watched on its console.

The guest is a Debian cloud kernel plus busybox. Its initramfs loads the virtio
modules, mounts ``/dev/vda`` (ext4) and switch_root's into it. The root disk's
``/sbin/init`` then proves, about once a second, that the disk it runs on is the disk it
was built as: it drops the page cache, checks every file of the base layer against
``/etc/manifest.md5``, executes a binary from the disk, appends to a counter file on
the disk, and prints exactly one console line per round::

    GUESTBOOT <uptime seconds>          (once, when the root disk's init starts)
    GUESTCHECK <n> OK
    GUESTCHECK <n> FAIL <bad>           (<bad>: failed files + wrong manifest
                                         + failed execution + failed counter write)
    GUESTERROR stage1: <reason>         (the initramfs could not start the disk; it then
                                         prints "GUESTCHECK <n> FAIL <files>" each second)

``base.raw`` is the lab's ``_base`` image; an instance disk is a qcow2 overlay on it. A
guest whose overlay lost its backing file (the bug the backing-chain check exists to
catch) reports FAIL, and the kernel's ``EXT4-fs error`` lines appear on the console.

Nothing is installed on the machine: the kernel and busybox ``.deb`` files are fetched
with ``apt-get download`` and unpacked with ``dpkg -x`` under the cache directory.

    python -m computeagent.lab.guest [--cache-dir D] [--refresh] [--verify] [--boot-check [N]]
"""

import argparse
import dataclasses
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from computeagent.lab.console import (  # console parsing, re-exported here
    BOOT_RE,
    CHECK_RE,
    CRASH_RE,
    ERROR_RE,
    INFO_RE,
    GuestCheck,
    GuestPanic,
    _Tail,
    parse_boots,
    parse_console,
    parse_errors,
    parse_info,
    wait_for_check,
)

__all__ = [
    "DEFAULT_CACHE_DIR", "CACHE_DIR_ENV", "KERNEL_META_PACKAGE", "BUSYBOX_PACKAGE",
    "VIRTIO_MODULES", "CMDLINE", "DISK_SIZE", "FILLER_FILES", "FILLER_SIZE", "FS_UUID",
    "FS_LABEL", "SOURCE_DATE_EPOCH", "INITRD_APPLETS", "BUILD_FORMAT", "CHECK_RE", "CRASH_RE",
    "BOOT_RE", "ERROR_RE", "INFO_RE", "TEMPLATE_DIR", "parse_info", "GuestBuildError",
    "GuestArtifacts", "GuestPanic", "GuestCheck", "load_artifacts", "build_guest",
    "parse_console", "parse_boots", "parse_errors", "wait_for_check", "create_overlay",
    "qemu_argv", "boot_check", "main",
]

DEFAULT_CACHE_DIR = "/var/cache/computeagent-lab/guest"
CACHE_DIR_ENV = "COMPUTEAGENT_LAB_GUEST_CACHE"

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# Load order: each module's "depends=" names only modules before it.
VIRTIO_MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev",
                  "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk",
                  # the config drive (SCSI cdrom on virtio-scsi, ISO 9660) and the NIC
                  "scsi_common", "scsi_mod", "virtio_scsi", "cdrom", "sr_mod", "isofs",
                  "failover", "net_failover", "virtio_net")

# The kernel parses console/quiet/panic; the initramfs reads root=, rootfstype= and
# rootflags= itself. "quiet" is loglevel 4: KERN_ERR and worse (ext4 errors, I/O
# errors) still reach the console, the boot chatter does not.
CMDLINE = "console=ttyS0 root=/dev/vda rootfstype=ext4 rootflags=rw quiet panic=-1"

DISK_SIZE = 64 * 1024 * 1024
# Deterministic filler files spread the checked data over the disk, so a disk whose
# content is wrong anywhere in the first tens of MiB fails the check.
FILLER_FILES = 8
FILLER_SIZE = 1024 * 1024
FS_UUID = "6c61622d-6775-4573-8400-000000000001"
FS_LABEL = "labguest"
SOURCE_DATE_EPOCH = 1700000000
INITRD_APPLETS = ("sh", "mount", "umount", "insmod", "switch_root", "cat", "sleep")
# Bump when the build steps change in a way the recipe's inputs do not show.
BUILD_FORMAT = 4


class GuestBuildError(Exception):
    """The guest could not be built (missing tool, package or download failure)."""


@dataclasses.dataclass(frozen=True)
class GuestArtifacts:
    directory: str
    kernel: str
    initrd: str
    base_raw: str
    cmdline: str
    base_sha256: str
    virtual_size: int
    kernel_version: str
    busybox_version: str
    recipe_hash: str

    def to_dict(self):
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- build

def _run(argv, **kwargs):
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    try:
        proc = subprocess.run(argv, **kwargs)
    except FileNotFoundError as exc:
        raise GuestBuildError("%s not found (is it installed?)" % argv[0]) from exc
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) \
            else (proc.stderr or "")
        raise GuestBuildError("%s failed (rc=%d): %s" % (" ".join(map(str, argv)),
                                                         proc.returncode, err.strip()[-2000:]))
    return proc


TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guest_init")


def _template(name):
    with open(os.path.join(TEMPLATE_DIR, name)) as f:
        return f.read()


def _apt_lists_state():
    try:
        st = os.stat("/var/lib/apt/lists")
    except OSError:
        return None
    return st.st_mtime_ns


def _apt_show(packages):
    """Candidate stanzas of ``packages`` from the local apt lists ({} when unknown)."""
    proc = subprocess.run(["apt-cache", "show", "--no-all-versions", *packages],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stanzas = {}
    for block in proc.stdout.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line[:1].isspace() or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if "Package" in fields:
            stanzas.setdefault(fields["Package"], fields)
    return stanzas


def _resolve_from_apt():
    stanzas = _apt_show([KERNEL_META_PACKAGE, BUSYBOX_PACKAGE])
    meta = stanzas.get(KERNEL_META_PACKAGE)
    busybox = stanzas.get(BUSYBOX_PACKAGE)
    if not meta or not busybox:
        return None
    m = re.search(r"(linux-image-(\S+))\s*\(=\s*([^)\s]+)\)", meta.get("Depends", ""))
    if not m:
        raise GuestBuildError("cannot find the kernel package in %s's Depends: %r"
                              % (KERNEL_META_PACKAGE, meta.get("Depends")))
    return {"kernel_package": m.group(1), "kernel_release": m.group(2),
            "kernel_version": m.group(3), "kernel_meta_version": meta.get("Version"),
            "busybox_version": busybox["Version"]}


def _newest_complete_build(cache_root):
    best = None
    try:
        names = os.listdir(cache_root)
    except OSError:
        return None
    for name in names:
        path = os.path.join(cache_root, name, "manifest.json")
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            continue
        if best is None or mtime > best[0]:
            best = (mtime, os.path.join(cache_root, name))
    return best and best[1]


def _resolve_versions(cache_root, refresh):
    """Package versions to build from. apt-cache costs ~1 s here (no pkgcache.bin), so
    the answer is remembered until the apt lists change."""
    state = _apt_lists_state()
    memo = os.path.join(cache_root, "resolved.json")
    if not refresh:
        try:
            with open(memo) as f:
                saved = json.load(f)
            if saved.get("apt_lists_state") == state and saved.get("versions"):
                return saved["versions"]
        except (OSError, ValueError):
            pass
    versions = _resolve_from_apt()
    if versions is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        state = _apt_lists_state()
        versions = _resolve_from_apt()
    if versions is None:
        return None
    _write_json_atomic(memo, {"apt_lists_state": state, "versions": versions})
    return versions


def _write_json_atomic(path, data):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _recipe(versions):
    return {
        "format": BUILD_FORMAT,
        "kernel_package": versions["kernel_package"],
        "kernel_version": versions["kernel_version"],
        "busybox_package": BUSYBOX_PACKAGE,
        "busybox_version": versions["busybox_version"],
        "modules": list(VIRTIO_MODULES),
        "initramfs_init": _template("initramfs-init.sh"),
        "rootfs_init": _template("rootfs-init.sh"),
        "guest_net": _template("guest-net.sh"),
        "dirtier": _template("dirtier.c"),
        "cmdline": CMDLINE,
        "disk_size": DISK_SIZE,
        "filler": [FILLER_FILES, FILLER_SIZE],
        "fs": [FS_UUID, FS_LABEL, SOURCE_DATE_EPOCH],
    }


def _recipe_hash(recipe):
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _deb_version(path):
    return _run(["dpkg-deb", "-f", path, "Version"], text=True).stdout.strip()


def _fetch_deb(debs_dir, package, version):
    """The .deb of ``package`` at ``version``, downloaded once into ``debs_dir``."""
    os.makedirs(debs_dir, exist_ok=True)

    def find():
        for name in sorted(os.listdir(debs_dir)):
            if name.startswith(package + "_") and name.endswith(".deb"):
                path = os.path.join(debs_dir, name)
                if _deb_version(path) == version:
                    return path
        return None

    path = find()
    if path:
        return path
    # apt-get writes into the current directory; "_apt cannot access" is only a warning.
    _run(["apt-get", "download", "-q", "%s=%s" % (package, version)], cwd=debs_dir)
    path = find()
    if not path:
        raise GuestBuildError("apt-get download %s=%s left no .deb" % (package, version))
    return path


def _busybox_binary(debs_dir, version, work):
    """busybox from the downloaded .deb; the installed one only if the download fails and
    the installed package has the same version."""
    try:
        deb = _fetch_deb(debs_dir, BUSYBOX_PACKAGE, version)
    except GuestBuildError:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", BUSYBOX_PACKAGE],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if proc.stdout.strip() == version and os.path.exists("/bin/busybox"):
            return "/bin/busybox"
        raise
    dest = os.path.join(work, "busybox-deb")
    _run(["dpkg", "-x", deb, dest])
    path = os.path.join(dest, "bin", "busybox")
    if not os.path.exists(path):
        raise GuestBuildError("%s has no /bin/busybox" % deb)
    return path


def _load_module(modroot, name):
    """Module bytes, decompressed if the package ships it compressed."""
    for dirpath, _dirs, files in os.walk(modroot):
        for suffix, reader in ((".ko", None), (".ko.xz", lzma.decompress),
                               (".ko.gz", gzip.decompress), (".ko.zst", "zstd")):
            fname = name + suffix
            if fname not in files:
                continue
            path = os.path.join(dirpath, fname)
            with open(path, "rb") as f:
                data = f.read()
            if reader == "zstd":
                data = _run(["zstd", "-dc", path]).stdout
            elif reader is not None:
                data = reader(data)
            return data
    raise GuestBuildError("module %s not found under %s" % (name, modroot))


def _filler(index, size):
    """Deterministic incompressible bytes (so ext4 really stores them)."""
    return hashlib.shake_256(b"computeagent-lab-guest-filler-%d" % index).digest(size)


def _write(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _clamp_times(top):
    for dirpath, dirs, files in os.walk(top, topdown=False):
        for name in files + dirs:
            os.utime(os.path.join(dirpath, name), (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH),
                     follow_symlinks=False)
    os.utime(top, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))


def _build_dirtier(out):
    """``dirtier.c`` as a static binary (gcc + libc6-dev; no other library)."""
    src = os.path.join(TEMPLATE_DIR, "dirtier.c")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    _run(["gcc", "-static", "-O2", "-o", out, src])
    os.chmod(out, 0o755)


def _build_rootfs(stage, busybox, applets, versions):
    """Stage the root disk's tree; returns (manifest text, number of files)."""
    with open(busybox, "rb") as f:
        bb = f.read()
    _write(os.path.join(stage, "bin", "busybox"), bb, 0o755)
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            os.symlink("busybox", os.path.join(stage, "bin", applet))
    # A second copy: executing it really reads from the disk (the running shell keeps
    # /bin/busybox mapped, so its pages are never dropped).
    _write(os.path.join(stage, "usr", "libexec", "busybox-probe"), bb, 0o755)
    _write(os.path.join(stage, "sbin", "init"), _template("rootfs-init.sh").encode(), 0o755)
    _write(os.path.join(stage, "sbin", "guest-net"), _template("guest-net.sh").encode(),
           0o755)
    # issue 11: a workload dirtying RAM at a chosen rate (started from user_data)
    _build_dirtier(os.path.join(stage, "usr", "libexec", "dirtier"))
    _write(os.path.join(stage, "etc", "guest-release"), (
        "computeagent lab guest\nkernel=%s %s\nbusybox=%s\n"
        % (versions["kernel_package"], versions["kernel_version"],
           versions["busybox_version"])).encode())
    _write(os.path.join(stage, "etc", "hostname"), b"labguest\n")
    for i in range(FILLER_FILES):
        _write(os.path.join(stage, "usr", "share", "guest", "blob-%02d" % i),
               _filler(i, FILLER_SIZE))
    for d in ("proc", "sys", "dev", "tmp", "root", "var/lib/guest"):
        os.makedirs(os.path.join(stage, d), exist_ok=True)
    os.chmod(os.path.join(stage, "tmp"), 0o1777)

    lines = []
    for dirpath, dirs, files in os.walk(stage):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            # MD5 finds a wrong byte as surely as SHA-256 does (nobody forges these
            # files) and costs the TCG guest a third of the CPU each round: a guest
            # that hashes its files every second must not starve the host it runs on
            with open(path, "rb") as f:
                digest = hashlib.md5(f.read()).hexdigest()
            lines.append("%s  /%s\n" % (digest, os.path.relpath(path, stage)))
    lines.sort(key=lambda line: line[34:])
    manifest = "".join(lines)
    _write(os.path.join(stage, "etc", "manifest.md5"), manifest.encode())
    _clamp_times(stage)
    return manifest, len(lines)


def _make_ext4(stage, out):
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH),
               E2FSPROGS_FAKE_TIME=str(SOURCE_DATE_EPOCH))
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", FS_LABEL, "-U", FS_UUID,
          "-E", "root_owner=0:0,hash_seed=%s" % FS_UUID, "-d", stage,
          out, str(DISK_SIZE // 1024) + "k"], env=env)
    # mke2fs -d copies each file's ctime, which no one can set: pin it with debugfs so
    # the same recipe gives the same base.raw, byte for byte.
    paths = ["/"]
    for dirpath, dirs, files in os.walk(stage):
        for name in dirs + files:
            paths.append("/" + os.path.relpath(os.path.join(dirpath, name), stage))
    script = "".join('sif "%s" ctime %d\n' % (p, SOURCE_DATE_EPOCH) for p in sorted(paths))
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as f:
        f.write(script)
        f.flush()
        _run(["debugfs", "-w", "-f", f.name, out], env=env)


def _normalize_newc(archive):
    """Zero what busybox cpio copies from the staging filesystem (inode and device
    numbers) in a "newc" archive, so the initrd is the same on every build."""
    out = bytearray()
    pos, ino = 0, 0
    while pos < len(archive):
        head = archive[pos:pos + 110]
        if head[:6] != b"070701":
            raise GuestBuildError("unexpected cpio record at offset %d" % pos)
        fields = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        filesize, namesize = fields[6], fields[11]
        name_end = pos + 110 + namesize
        data_start = (name_end + 3) & ~3
        data_end = (data_start + filesize + 3) & ~3
        name = archive[pos + 110:name_end]
        ino += 1
        fields[0] = 0 if name == b"TRAILER!!!\0" else ino
        fields[7] = fields[8] = 0  # devmajor, devminor
        out += b"070701" + b"".join(b"%08X" % v for v in fields)
        out += archive[pos + 110:data_end]
        pos = data_end
        if name == b"TRAILER!!!\0":
            out += archive[pos:]
            break
    return bytes(out)


def _build_initrd(stage, busybox, modroot, init_text, out):
    with open(busybox, "rb") as f:
        _write(os.path.join(stage, "bin", "busybox"), f.read(), 0o755)
    for applet in INITRD_APPLETS:
        os.symlink("busybox", os.path.join(stage, "bin", applet))
    for name in VIRTIO_MODULES:
        _write(os.path.join(stage, "lib", "modules", name + ".ko"),
               _load_module(modroot, name))
    _write(os.path.join(stage, "init"), init_text.encode(), 0o755)
    for d in ("dev", "proc", "sys", "newroot"):
        os.makedirs(os.path.join(stage, d), exist_ok=True)
    try:  # the kernel's built-in initramfs has one too; this is belt and braces
        os.mknod(os.path.join(stage, "dev", "console"), 0o600 | 0o020000, os.makedev(5, 1))
    except OSError:
        pass
    _clamp_times(stage)
    names = []
    for dirpath, dirs, files in os.walk(stage):
        for name in dirs + files:
            names.append(os.path.relpath(os.path.join(dirpath, name), stage))
    names.sort()
    listing = ("\n".join(["."] + names) + "\n").encode()
    archive = _run([busybox, "cpio", "-o", "-H", "newc", "-R", "0:0"],
                   input=listing, cwd=stage).stdout
    archive = _normalize_newc(archive)
    _write(out, gzip.compress(archive, compresslevel=9, mtime=0))


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _build(out, versions, debs_dir, work):
    t0 = time.monotonic()
    kernel_deb = _fetch_deb(debs_dir, versions["kernel_package"], versions["kernel_version"])
    busybox = _busybox_binary(debs_dir, versions["busybox_version"], work)
    t_fetch = time.monotonic() - t0

    kdir = os.path.join(work, "kernel-deb")
    _run(["dpkg", "-x", kernel_deb, kdir])
    release = versions["kernel_release"]
    vmlinuz = os.path.join(kdir, "boot", "vmlinuz-" + release)
    modroot = os.path.join(kdir, "lib", "modules", release)
    if not os.path.exists(vmlinuz) or not os.path.isdir(modroot):
        raise GuestBuildError("%s lacks vmlinuz or modules for %s" % (kernel_deb, release))
    shutil.copyfile(vmlinuz, os.path.join(out, "vmlinuz"))

    applets = _run([busybox, "--list"], text=True).stdout.split()
    manifest, count = _build_rootfs(os.path.join(work, "rootfs"), busybox, applets, versions)
    manifest_sha = hashlib.sha256(manifest.encode()).hexdigest()
    base_raw = os.path.join(out, "base.raw")
    _make_ext4(os.path.join(work, "rootfs"), base_raw)

    init_text = (_template("initramfs-init.sh")
                 .replace("@MODULES@", " ".join(VIRTIO_MODULES))
                 .replace("@MANIFEST_SHA256@", manifest_sha)
                 .replace("@MANIFEST_COUNT@", str(count)))
    _build_initrd(os.path.join(work, "initramfs"), busybox, modroot, init_text,
                  os.path.join(out, "initrd.img"))
    return {
        "manifest_sha256": manifest_sha,
        "manifest_files": count,
        "fetch_seconds": round(t_fetch, 3),
    }


def _artifacts_from(directory):
    with open(os.path.join(directory, "manifest.json")) as f:
        meta = json.load(f)
    return GuestArtifacts(
        directory=directory,
        kernel=os.path.join(directory, "vmlinuz"),
        initrd=os.path.join(directory, "initrd.img"),
        base_raw=os.path.join(directory, "base.raw"),
        cmdline=meta["cmdline"],
        base_sha256=meta["base_sha256"],
        virtual_size=meta["virtual_size"],
        kernel_version=meta["kernel_release"],
        busybox_version=meta["busybox_version"],
        recipe_hash=meta["recipe_hash"],
    )


def load_artifacts(directory, verify=False):
    """The artifacts of an existing build directory (``verify`` re-hashes base.raw)."""
    art = _artifacts_from(directory)
    if verify and _sha256_file(art.base_raw) != art.base_sha256:
        raise GuestBuildError("%s does not match its recorded sha256" % art.base_raw)
    return art


def build_guest(cache_dir=None, *, refresh=False, verify=False):
    """Build the guest (or find it in the cache) and return its :class:`GuestArtifacts`.

    ``cache_dir`` defaults to ``$COMPUTEAGENT_LAB_GUEST_CACHE`` or
    ``/var/cache/computeagent-lab/guest``; the build lands in ``<cache_dir>/<recipe
    hash>/``. ``refresh`` asks apt again for the current package versions (otherwise
    they are remembered until the apt lists change); ``verify`` re-hashes a cached
    base.raw. Concurrent callers are serialised by a lock file; the loser of the race
    gets the winner's build.
    """
    cache_root = os.path.abspath(cache_dir or os.environ.get(CACHE_DIR_ENV)
                                 or DEFAULT_CACHE_DIR)
    os.makedirs(cache_root, exist_ok=True)

    versions = _resolve_versions(cache_root, refresh)
    if versions is None:
        newest = _newest_complete_build(cache_root)
        if newest:  # offline and no apt lists: use what we have
            return load_artifacts(newest, verify)
        raise GuestBuildError("apt knows no %s/%s and nothing is cached in %s"
                              % (KERNEL_META_PACKAGE, BUSYBOX_PACKAGE, cache_root))
    recipe = _recipe(versions)
    rhash = _recipe_hash(recipe)
    final = os.path.join(cache_root, rhash)
    if os.path.exists(os.path.join(final, "manifest.json")):
        return load_artifacts(final, verify)

    with open(os.path.join(cache_root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(final, "manifest.json")):
            return load_artifacts(final, verify)
        t0 = time.monotonic()
        work = tempfile.mkdtemp(prefix=".build-%s-" % rhash, dir=cache_root)
        try:
            out = os.path.join(work, "out")
            os.mkdir(out)
            info = _build(out, versions, os.path.join(cache_root, "debs"), work)
            base_raw = os.path.join(out, "base.raw")
            meta = {
                "recipe_hash": rhash,
                "recipe": {k: v for k, v in recipe.items()
                           if not k.endswith("_init") and k != "guest_net"},
                "init_sha256": {k: hashlib.sha256(recipe[k].encode()).hexdigest()
                                for k in ("initramfs_init", "rootfs_init", "guest_net")},
                "kernel_package": versions["kernel_package"],
                "kernel_release": versions["kernel_release"],
                "kernel_version": versions["kernel_version"],
                "busybox_version": versions["busybox_version"],
                "cmdline": CMDLINE,
                "virtual_size": os.path.getsize(base_raw),
                "base_sha256": _sha256_file(base_raw),
                "base_allocated": os.stat(base_raw).st_blocks * 512,
                "sizes": {n: os.path.getsize(os.path.join(out, n))
                          for n in ("vmlinuz", "initrd.img", "base.raw")},
                "sha256": {n: _sha256_file(os.path.join(out, n))
                           for n in ("vmlinuz", "initrd.img")},
                "built_at": int(time.time()),
                "build_seconds": None,
                **info,
            }
            meta["build_seconds"] = round(time.monotonic() - t0, 3)
            for name in ("vmlinuz", "initrd.img", "base.raw"):
                os.chmod(os.path.join(out, name), 0o444)
            _write_json_atomic(os.path.join(out, "manifest.json"), meta)
            os.rename(out, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return load_artifacts(final)


# --------------------------------------------------------------------------- booting

def create_overlay(artifacts, path, size=None, qemu_img="qemu-img"):
    """A qcow2 overlay on base.raw, as an instance disk (``size`` defaults to the base's)."""
    _run([qemu_img, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", artifacts.base_raw,
          path, str(size or artifacts.virtual_size)])
    return path


def qemu_argv(artifacts, disk, console_log, memory_mib=96, disk_format="qcow2",
              accel="tcg", qemu="qemu-system-x86_64", extra_append="",
              qmp_socket=None):
    """A qemu command line booting the guest on ``disk`` (virtio, drive id ``disk0``)
    with its serial console written to ``console_log``; QMP listens on ``qmp_socket``
    if given. ``-no-reboot`` makes a panic end QEMU."""
    append = artifacts.cmdline + (" " + extra_append if extra_append else "")
    argv = [qemu, "-accel", accel, "-m", str(memory_mib), "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", artifacts.kernel, "-initrd", artifacts.initrd, "-append", append,
            "-drive", "file=%s,format=%s,if=virtio,id=disk0,cache=none,aio=threads"
            % (disk, disk_format),
            "-serial", "file:%s" % console_log, "-monitor", "none"]
    if qmp_socket:
        argv += ["-qmp", "unix:%s,server=on,wait=off" % qmp_socket]
    return argv


def boot_check(artifacts=None, workdir=None, checks=3, timeout=60, disk=None,
               disk_format="qcow2"):
    """Boot the guest once under qemu-system-x86_64 (TCG) on a fresh overlay (or on
    ``disk``), wait for ``checks`` GUESTCHECK lines, stop QEMU (by its PID) and report
    what happened: checks, boots, errors, timings, the console text."""
    artifacts = artifacts or build_guest()
    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="labguest-")
    console = os.path.join(workdir, "console.log")
    if disk is None:
        disk = create_overlay(artifacts, os.path.join(workdir, "overlay.qcow2"), 1 << 30)
    argv = qemu_argv(artifacts, disk, console, disk_format=disk_format)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    seen, first_at, boot_at, error = [], None, None, None
    try:
        tail = _Tail(console, open)
        deadline = t0 + timeout
        while len(seen) < checks:
            if proc.poll() is not None:
                error = "qemu exited with %s: %s" % (
                    proc.returncode, proc.stderr.read().decode(errors="replace").strip())
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = "timed out after %ss" % timeout
                break
            lines = tail.lines()
            if boot_at is None and any(BOOT_RE.search(line) for line in lines):
                boot_at = time.monotonic() - t0
            new = [c for line in lines for c in parse_console(line)]
            if new and first_at is None:
                first_at = time.monotonic() - t0
            seen += new
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    try:
        with open(console, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    result = {
        "checks": [c._asdict() for c in parse_console(text)],
        "boots": parse_boots(text),
        "errors": parse_errors(text),
        "first_boot_seconds": boot_at and round(boot_at, 3),
        "first_check_seconds": first_at and round(first_at, 3),
        "run_seconds": round(time.monotonic() - t0, 3),
        "error": error,
        "console": text,
    }
    if own_dir:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m computeagent.lab.guest",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", help="cache root (default %s, or $%s)"
                        % (DEFAULT_CACHE_DIR, CACHE_DIR_ENV))
    parser.add_argument("--refresh", action="store_true",
                        help="ask apt for the current package versions again")
    parser.add_argument("--verify", action="store_true", help="re-hash a cached base.raw")
    parser.add_argument("--boot-check", type=int, metavar="N", nargs="?", const=3,
                        help="also boot it under QEMU (TCG) and wait for N checks")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        art = build_guest(args.cache_dir, refresh=args.refresh, verify=args.verify)
    except GuestBuildError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    out = art.to_dict()
    out["build_call_seconds"] = round(time.monotonic() - t0, 3)
    rc = 0
    if args.boot_check:
        res = boot_check(art, checks=args.boot_check)
        res.pop("console")
        out["boot_check"] = res
        rc = 0 if (res["error"] is None and res["checks"]
                   and all(c["ok"] for c in res["checks"])) else 1
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
