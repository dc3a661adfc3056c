#!/bin/sh
# Runs every script in /warewulf/init.d and /warewulf/wwinit.d in name order with sh
# (so a script need not be executable). A failing script is reported, not fatal: the
# node still boots, and the message is on the console.

for dir in /warewulf/init.d /warewulf/wwinit.d; do
    [ -d "$dir" ] || continue
    for script in "$dir"/*; do
        [ -f "$script" ] || continue
        echo "wwinit: running $script"
        sh "$script" || echo "wwinit: $script failed (exit $?)" >&2
    done
done
