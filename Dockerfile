# The root filesystem of the vxlanpy managed plugin (see config.json and scripts/build-plugin).
#
# The build needs no network when the base already holds iptables, wg and wireguard-go: the Python packages
# come as wheels from the build context (wheels/), never from an index.  scripts/build-plugin prepares that
# context (the wheels of vxlanpy and of its dependencies, for the base's Python, plus pip's own wheel) and, by
# default, builds the base itself with debootstrap (Debian bookworm + python3, iptables, wireguard-tools and
# wireguard-go) so that no registry is needed:
#
#   scripts/build-plugin                                   # base vxlanpy-base:bookworm, offline
#   VXLANPY_BASE_IMAGE=python:3.12-slim scripts/build-plugin   # a base from a registry (apt needs network)
#
# By hand:  pip wheel -w wheels '.[etcd]' pip && docker build -t vxlanpy-rootfs .
ARG BASE=python:3.12-slim
FROM ${BASE}

# iptables from the base's Debian release (bookworm for vxlanpy-base:bookworm; python:3.12-slim follows
# Debian's current release, python:3.12-slim-bookworm stays on bookworm), with the nft backend like the
# host's dockerd: vxlanpy's chains must live in the same tables as Docker's.  nft writes the table that keeps
# frames switched inside vxlanpy's bridges out of conntrack (plugin/vxlanpy/dataplane/notrack.py).  Encrypted
# networks need `wg`
# (wireguard-tools, which drives both backends) and wireguard-go (the backend where the host's kernel has no
# WireGuard).  apt runs only when one of them is missing.
RUN set -eu; \
    missing=; \
    command -v iptables-nft >/dev/null 2>&1 || missing="$missing iptables"; \
    command -v nft >/dev/null 2>&1 || missing="$missing nftables"; \
    command -v wg >/dev/null 2>&1 || missing="$missing wireguard-tools"; \
    command -v wireguard-go >/dev/null 2>&1 || missing="$missing wireguard-go"; \
    if [ -n "$missing" ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends $missing; \
        rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    fi; \
    update-alternatives --set iptables /usr/sbin/iptables-nft; \
    update-alternatives --set ip6tables /usr/sbin/ip6tables-nft; \
    nft --version >/dev/null; \
    wg --version >/dev/null; \
    wireguard-go --version >/dev/null

# vxlanpy with its etcd extra (multi-host mode), in a venv of its own with no pip left in it, installed from
# the wheels only (pip runs from its own wheel).
COPY wheels/ /tmp/wheels/
RUN set -eu; \
    python3 -m venv --without-pip /opt/vxlanpy; \
    pip_wheel=$(ls /tmp/wheels/pip-*.whl); vxlanpy_wheel=$(ls /tmp/wheels/vxlanpy-*.whl); \
    /opt/vxlanpy/bin/python "$pip_wheel/pip" install --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /tmp/wheels "${vxlanpy_wheel}[etcd]"; \
    rm -rf /tmp/wheels; \
    /opt/vxlanpy/bin/python -c 'import vxlanpy.app, etcd3gw'; \
    /opt/vxlanpy/bin/vxlanpy --help >/dev/null

# A managed plugin takes its entrypoint and environment from config.json, not from here; these serve
# `docker run` of this image for debugging.  gunicorn serves /run/docker/plugins/vxlanpy.sock.
ENV VXLANPY_SOCKET=/run/docker/plugins/vxlanpy.sock VXLANPY_STATE_DIR=/var/lib/vxlanpy
# The state directory of the image (the managed plugin bind-mounts the host's over it): root only.
RUN install -d -m 0700 /var/lib/vxlanpy
ENTRYPOINT ["/opt/vxlanpy/bin/vxlanpy", "serve"]
