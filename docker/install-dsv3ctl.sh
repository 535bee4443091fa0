#!/bin/sh
# What both image targets add on top of their (different) bases, so it cannot be a shared stage:
# OpenSSH for the MPI launcher (no host keys baked in: the launcher installs the group's from the Secret)
# and the dsv3ctl wheel in its own venv, pinned by constraints.txt. Expects /tmp/wheels/*.whl and
# /tmp/constraints.txt; ends by checking that the launcher the pods run works.
# apt versions are the base's Ubuntu release (the base image tag is the pin).
set -eu
apt-get update
apt-get install -y --no-install-recommends openssh-server openssh-client python3-venv
rm -rf /var/lib/apt/lists/*
mkdir -p /run/sshd /etc/dsv3ctl/ssh
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
python3 -m venv /opt/dsv3ctl/venv
/opt/dsv3ctl/venv/bin/pip install --no-cache-dir -c /tmp/constraints.txt /tmp/wheels/*.whl
ln -s /opt/dsv3ctl/venv/bin/dsv3ctl /usr/local/bin/dsv3ctl
rm -rf /tmp/wheels /tmp/constraints.txt /tmp/install-dsv3ctl.sh
dsv3ctl launch --help > /dev/null
