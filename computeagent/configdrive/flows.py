"""The config drive in the agent's flows: built at spawn, rebuilt on a fixed-IP change
(and shown to the running guest as a new medium), carried to a migration destination.

Travel (live block migration and resize): libvirt does not copy a read-only cdrom, and
the destination QEMU must find the image at the same path before the migration starts
(nova's weak spot with read-only config drives). The destination fetches the source's
image over libvirt (no ssh), reads it back with pycdlib, takes only its user data, and
rebuilds the drive from its own record; the rebuilt drive's content digest must equal
the source image's, or the migration is refused. So a destination never writes bytes
it did not generate itself, and both hosts provably hold the same content.
"""
import base64
import logging
import os
import tempfile

from computeagent import exception
from computeagent.configdrive import content
from computeagent.configdrive import iso

LOG = logging.getLogger(__name__)

DRIVE_NAME = "disk.config"


class ConfigDriveFlows:
    def __init__(self, manager):
        self.m = manager
        self.db = manager.db
        self.driver = manager.driver

    # -- helpers -----------------------------------------------------------
    def _path(self, uuid):
        return self.driver.config_drive_path(uuid)

    def wanted(self, inst):
        """Does ``inst`` (a record) have a config drive?"""
        return bool(inst.get("config_drive")) or os.path.exists(self._path(inst["uuid"]))

    def _user_data(self, inst):
        """The decoded user data: from the record, else from the drive already here."""
        if inst.get("user_data"):
            return base64.b64decode(inst["user_data"])
        path = self._path(inst["uuid"])
        if os.path.exists(path):
            return iso.read(path).get(content.USER_DATA)
        return None

    def build(self, inst):
        """Write ``<instance dir>/disk.config`` for ``inst`` (a record) if it has a
        drive; returns the content digest or None."""
        if not self.wanted(inst):
            return None
        digest = iso.write(self._path(inst["uuid"]),
                           content.drive_files(inst, self._user_data(inst)))
        LOG.info("config drive of %s built (content %s)", inst["uuid"], digest[:12])
        return digest

    # -- spawn -------------------------------------------------------------
    def at_spawn(self, inst):
        """Before the domain is defined (the instance dir exists)."""
        return self.build(inst)

    # -- fixed IPs ---------------------------------------------------------
    def after_network_change(self, inst):
        """``inst`` already carries the new networks: rebuild the drive and, if the
        guest runs, swap its medium (eject + insert; see virt.guest.change_media)."""
        if not self.wanted(inst):
            return None
        digest = self.build(inst)
        if self.driver.lookup(inst["uuid"]) is not None:
            self.driver.swap_config_drive(inst["uuid"])
        return digest

    # -- travel ------------------------------------------------------------
    def at_destination(self, instance, source_host, source_dir=None, source_has=None):
        """On a migration or resize destination, before the domain is defined or the
        migration starts: bring the drive the source has (if any), rebuilt here from
        ``instance`` (the validated view of the record) and checked by digest.

        ``source_dir`` is the directory holding the source's drive (its instance dir,
        or ``<uuid>_resize`` during a resize). ``source_has``: what the source said
        in its disk info (False: it has no drive, nothing is asked of its libvirtd;
        None: not said, asked). Returns the digest or None (the source has no
        drive). Raises MigrationError when the contents differ."""
        uuid = instance["uuid"]
        if source_has is False:
            # a source that wrongly says so only fails its own migration: its
            # domain XML names a drive this host does not have
            return None
        source_dir = source_dir or self.driver.instance_dir(uuid)
        local = self._path(uuid)
        fd, tmp = tempfile.mkstemp(prefix=".disk.config-peer-",
                                   dir=os.path.dirname(local))
        try:
            with os.fdopen(fd, "wb") as f:
                if source_host == self.m.host:
                    src = os.path.join(source_dir, DRIVE_NAME)
                    if not os.path.exists(src):
                        return None
                    if os.path.getsize(src) > iso.MAX_IMAGE_BYTES:
                        raise exception.MigrationError(reason="%s is too large" % src)
                    with open(src, "rb") as s:
                        f.write(s.read())
                else:
                    try:
                        self.driver.fetch_peer_file(source_host, source_dir, DRIVE_NAME,
                                                    f, iso.MAX_IMAGE_BYTES)
                    except FileNotFoundError:
                        return None
            try:
                theirs = iso.read(tmp)
            except iso.ConfigDriveError as e:
                raise exception.MigrationError(reason="config drive from %s: %s"
                                               % (source_host, e))
            user_data = theirs.get(content.USER_DATA)
            ours = content.drive_files(instance, user_data)
            want, got = iso.files_digest(theirs), iso.files_digest(ours)
            if want != got:
                differ = sorted(k for k in set(ours) | set(theirs)
                                if ours.get(k) != theirs.get(k))
                raise exception.MigrationError(
                    reason="config drive on %s differs from the record (%s)"
                    % (source_host, ", ".join(differ)))
            digest = iso.write(local, ours)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        values = {"config_drive": True,
                  "user_data": (base64.b64encode(user_data).decode()
                                if user_data is not None else None)}
        try:
            self.db.instance_update(uuid, **values)
        except exception.InstanceNotFound:
            pass     # the flow creates the record later; the drive itself says it all
        LOG.info("config drive of %s rebuilt from the record, equal to %s's (%s)",
                 uuid, source_host, digest[:12])
        return digest
