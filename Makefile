# provisiond: the two commands of the README, and their helpers.
#   make test   install what the tests need (apt-get only if missing, .venv), ruff, pytest
#   make demo   provisiond on SQLite in a private network namespace + one QEMU machine
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
PYTHON ?= python3
APT_PACKAGES := qemu-system-x86 qemu-utils ipxe busybox-static dropbear-bin tgt \
  dnsmasq-base linux-image-amd64 btrfs-progs socat extlinux syslinux-common fdisk \
  dosfstools atftp tftp-hpa dnsutils curl kea-admin cpio zstd iproute2 kmod \
  libiscsi-bin util-linux chromium chromium-driver postgresql ovmf lvm2 openssl \
  mmdebstrap e2fsprogs systemd openipmi ipmitool partclone nftables
# issue 12: Debian's netboot installer (tests/testbed/test_template_installer_vm.py)
APT_PACKAGES += debian-installer-12-netboot-amd64
# issue 16: QEMU's iSCSI block driver (qemu-io --image-opts driver=iscsi in test_storage_host_vm);
# issue 15: mkntfs and ntfs-3g for bench/capture's NTFS disk
APT_PACKAGES += qemu-block-extra ntfs-3g
# issue 15: fan-out deploys over multicast (udp-sender in the daemon, udp-receiver in the initrd)
APT_PACKAGES += udpcast
# issue 16: open-iscsi's iscsistart, the SAN-booted guest's own initiator (bench/clone/bench_first_write.py)
APT_PACKAGES += open-iscsi
PYTEST_ARGS ?=

.PHONY: test demo deps apt venv vendor lint unit initrd clean

deps: apt venv vendor

apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:" $$missing; \
	  guard=0; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; guard=1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; rc=$$?; \
	  [ $$guard = 1 ] && rm -f /usr/sbin/policy-rc.d; \
	  exit $$rc; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

vendor:
	bash web/vendor.sh

lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) tools/check_imports.py

test: deps lint
	$(VENV)/bin/pytest -q -rs --durations=40 $(PYTEST_ARGS)

unit: venv
	$(VENV)/bin/pytest -q tests/unit

demo: deps
	bash vm-testbed/demo.sh

clean:
	rm -rf $(VENV) build .pytest_cache web/static/vendor
