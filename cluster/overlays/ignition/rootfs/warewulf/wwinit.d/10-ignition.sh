#!/bin/sh
# Applies the node's ignition config (/warewulf/ignition.json) to its local disks: ignition's
# fetch-offline stage reads the file, its disks stage partitions and formats.
#
# ww-ignition.service runs this once systemd and udev are up: ignition finds partitions by
# /dev/disk/by-* links, which only udev creates. When wwinit runs it earlier (this file is in
# wwinit.d) udev is not running yet, so it only says that the service will do the work.

PATH=$PATH:/sbin:/usr/sbin:/bin:/usr/bin
config=/warewulf/ignition.json

[ -s "$config" ] || exit 0

if [ "$(cat /proc/1/comm 2>/dev/null)" != systemd ]; then
    echo "warewulf: ignition: disks are set up later by ww-ignition.service"
    exit 0
fi

ignition=
for c in /usr/lib/dracut/modules.d/30ignition/ignition /usr/libexec/ignition /usr/bin/ignition; do
    if [ -x "$c" ]; then
        ignition=$c
        break
    fi
done
if [ -z "$ignition" ]; then
    echo "warewulf: ignition not found in the image; install it to set up local disks" >&2
    exit 1
fi

cache=/run/ww-ignition.json
rm -f "$cache"
echo "warewulf: ignition: partitioning and formatting local disks"
IGNITION_CONFIG_FILE=$config "$ignition" --platform=file --stage=fetch-offline \
    --config-cache="$cache" --log-to-stdout || exit 1
"$ignition" --platform=file --stage=disks --config-cache="$cache" --log-to-stdout
