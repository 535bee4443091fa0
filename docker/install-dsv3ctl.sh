#!/bin/sh
# Install the dsv3ctl wheel into its own venv, pinned by constraints.txt. Both image targets run this
# (their bases differ, so the step cannot be a shared stage). Expects /tmp/wheels/*.whl and
# /tmp/constraints.txt; ends by checking that the launcher the pods run works.
set -eu
python3 -m venv /opt/dsv3ctl/venv
/opt/dsv3ctl/venv/bin/pip install --no-cache-dir -c /tmp/constraints.txt /tmp/wheels/*.whl
ln -s /opt/dsv3ctl/venv/bin/dsv3ctl /usr/local/bin/dsv3ctl
rm -rf /tmp/wheels /tmp/constraints.txt /tmp/install-dsv3ctl.sh
dsv3ctl launch --help > /dev/null
