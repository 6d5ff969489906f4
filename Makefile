# Keel: `make run` boots the image in QEMU, `make test` runs the whole suite.
SHELL := /bin/bash
.DEFAULT_GOAL := image

CARGO ?= cargo
CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
TRIPLE := x86_64-unknown-linux-gnu
BINDIR := $(CARGO_TARGET_DIR)/$(TRIPLE)/release
BUILDER := $(CARGO_TARGET_DIR)/release/keel-image-builder
OUT := $(CURDIR)/out
# Extra keel.* kernel parameters baked into out/cmdline, e.g. make image CMDLINE="keel.debug".
CMDLINE ?=

QEMU := qemu-system-x86_64 -accel tcg -cpu EPYC,+svm,+npt -m 2048 -smp 2 -nographic -no-reboot \
	-kernel $(OUT)/vmlinuz -initrd $(OUT)/initramfs.img \
	-netdev user,id=net0,hostfwd=tcp::8443-:8443 -device e1000,netdev=net0

.PHONY: deps build image test-image run check unit e2e test bench clean fuzz-api

deps:
	@./image-builder/install-deps.sh

build:
	RUSTFLAGS=-Ctarget-feature=+crt-static $(CARGO) build --release --target $(TRIPLE) -p keel-init -p keel-vmm
	$(CARGO) build --release -p keel-image-builder

image: deps build
	$(BUILDER) build --out $(OUT) \
		--bin keel=$(BINDIR)/keel --bin keel-vmm=$(BINDIR)/keel-vmm \
		--cmdline "$(CMDLINE)"

# The test image: the production image plus what the end-to-end tests run inside the host
# (tests/payload: the scenario runner and a guest /init; Debian's cloud kernel as the guest kernel).
TEST_OUT := $(OUT)/test
TEST_OVERLAY := $(TEST_OUT)/overlay
test-image: image
	RUSTFLAGS=-Ctarget-feature=+crt-static $(CARGO) build --release --target $(TRIPLE) -p keel-test-payload
	rm -rf $(TEST_OVERLAY) && mkdir -p $(TEST_OVERLAY)/usr/lib/keel-tests $(TEST_OVERLAY)/usr/bin
	cp -r tests/image/. $(TEST_OVERLAY)/
	cp $(BINDIR)/keel-e2e-runner $(TEST_OVERLAY)/usr/bin/
	cp "$$($(BUILDER) fetch-kernel --which guest)"/boot/vmlinuz-* $(TEST_OVERLAY)/usr/lib/keel-tests/vmlinuz
	$(BUILDER) guest-initramfs --which guest --init $(BINDIR)/keel-guest-init \
		--modules button,evdev --out $(TEST_OVERLAY)/usr/lib/keel-tests/initrd.img
	$(BUILDER) build --out $(TEST_OUT) --overlay $(TEST_OVERLAY) \
		--bin keel=$(BINDIR)/keel --bin keel-vmm=$(BINDIR)/keel-vmm

run: image
	@echo "==> booting out/ in QEMU (TCG); quit with Ctrl-A X; host port 8443 -> guest 8443"
	$(QEMU) -append "$$(cat $(OUT)/cmdline)"

check:
	@echo "==> cargo fmt --check; cargo clippy -D warnings"
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	@echo "==> unit tests"
	$(CARGO) test --workspace --exclude keel-tests

e2e: test-image
	@echo "==> end-to-end tests in QEMU against $(OUT)"
	KEEL_OUT=$(OUT) $(CARGO) test -p keel-tests -- --test-threads=2

test: deps check unit e2e

bench: test-image
	@echo "==> image sizes (from out/manifest.json)"
	@$(BUILDER) size-report --manifest $(OUT)/manifest.json
	@echo "==> keel-vmm inside the Keel test image (nested KVM under QEMU/TCG: compare runs, not absolutes)"
	KEEL_OUT=$(OUT) $(CARGO) bench -p keel-tests --bench vmm

# schemathesis (PyPI) against the agent's OpenAPI document; not part of `make test`.
fuzz-api:
	./tests/fuzz-api.sh

clean:
	$(CARGO) clean
	rm -rf $(OUT) .cache/keel
