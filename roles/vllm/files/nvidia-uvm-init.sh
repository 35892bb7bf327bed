#!/bin/sh
# Loads nvidia-uvm and creates /dev/nvidia-uvm and /dev/nvidia-uvm-tools, as the device node
# script of NVIDIA's CUDA installation guide does. CUDA needs the node; Debian's packages have
# no udev rule that creates it (Ubuntu's do, and then this changes nothing), and the
# sandboxed vLLM services cannot load a module or create a node themselves.
set -eu
modprobe nvidia-uvm
major=$(awk '$2 == "nvidia-uvm" { print $1 }' /proc/devices)
if [ -z "$major" ]; then
  echo "nvidia-uvm is loaded but has no entry in /proc/devices" >&2
  exit 1
fi
for minor in 0 1; do
  if [ "$minor" = 0 ]; then node=/dev/nvidia-uvm; else node=/dev/nvidia-uvm-tools; fi
  # Kept when it is the right character device; the major is dynamic.
  if [ -c "$node" ] && [ "$(stat -c %t:%T "$node")" = "$(printf %x:%x "$major" "$minor")" ]; then
    continue
  fi
  rm -f "$node"
  mknod -m 0666 "$node" c "$major" "$minor"
done
