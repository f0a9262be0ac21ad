#!/bin/bash
# Runs inside the image root after package installation (kiwi's config.sh hook).
# IMS takes boot/<kernel_file_name> and boot/<initrd_file_name> from the root; the job defaults are
# "vmlinuz" and "initrd", while Debian installs vmlinuz-<ver> and initrd.img-<ver>. Relative links keep
# them valid both inside the image and when the packager looks at the tree from the build host.
# aarch64 jobs take boot/Image by default (the original's name); Debian's arm64 kernel is vmlinuz-<ver>-arm64.
set -euo pipefail
cd /boot
kernel=$(ls -1 vmlinuz-* | sort -V | tail -n 1)
version=${kernel#vmlinuz-}
test -f "initrd.img-${version}"
ln -sfn "${kernel}" vmlinuz
ln -sfn "initrd.img-${version}" initrd
if [ "$(dpkg --print-architecture)" = arm64 ]; then
    ln -sfn "${kernel}" Image
fi
