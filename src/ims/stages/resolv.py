"""Give the image working DNS while a user works in it, and put the image's own file back afterwards.

The host's resolv.conf, or, when the session has its own network (IMS_JOB_NETWORK=isolated), one that
names slirp4netns's DNS forwarder (ims.stages.slirp.resolv_conf).

Images often carry a resolv.conf that only works on a booted node (a systemd-resolved stub link);
package installs inside the jail need working DNS.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from ims.stages.rootpath import resolve_in_root

HOST_RESOLV = Path("/etc/resolv.conf")


class ResolvSwap:
    def __init__(self, image_root: Path, keep_dir: Path, content: bytes | None = None) -> None:
        self.content = content  # what the image gets; None: the host's /etc/resolv.conf
        self.target = resolve_in_root(image_root, "etc") / "resolv.conf"
        self.saved = keep_dir / "resolv.conf.image"
        self.had_original = False
        self.active = False
        self.etc_real = ""  # the image's /etc as it was: the session may swap it for a link meanwhile

    def swap_in(self) -> bool:
        """Returns False when there is nothing to do (no host file, or no /etc in the image)."""
        if self.content is None and not HOST_RESOLV.is_file():
            return False
        if not self.target.parent.is_dir() or self.target.parent.is_symlink():
            return False
        content = self.content if self.content is not None else HOST_RESOLV.read_bytes()
        self.saved.unlink(missing_ok=True)
        self.etc_real = os.path.realpath(self.target.parent)
        if os.path.lexists(self.target):
            if stat.S_ISDIR(os.lstat(self.target).st_mode):
                return False
            _move(self.target, self.saved)
            self.had_original = True
        self.target.write_bytes(content)
        self.target.chmod(0o644)
        self.active = True
        return True

    def restore(self) -> bool:
        """Put the image's file back; False when the session replaced the image's /etc (then nothing is touched).

        Called once the session is over: the path is checked again, so a link the user left in place of
        /etc (say, to the host's /etc) is never written through by this root process.
        """
        if not self.active:
            return True
        self.active = False
        if os.path.realpath(self.target.parent) != self.etc_real or self.target.parent.is_symlink():
            return False
        if os.path.lexists(self.target) and not stat.S_ISDIR(os.lstat(self.target).st_mode):
            self.target.unlink()
        if self.had_original:
            _move(self.saved, self.target)
        return True


def _move(source: Path, target: Path) -> None:
    """Rename, or copy the entry itself (a symlink stays a symlink) when they are on different file systems."""
    try:
        os.rename(source, target)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)
        source.unlink()
