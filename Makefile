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
# The same, under the name docs/boot-media.md uses; lands in out/cmdline, the ISO, PXE and USB media.
KEEL_CMDLINE ?=

QEMU := qemu-system-x86_64 -accel tcg -cpu EPYC,+svm,+npt -m 2048 -smp 1 -nographic -no-reboot \
	-kernel $(OUT)/vmlinuz -initrd $(OUT)/initramfs.img \
	-netdev user,id=net0,hostfwd=tcp::8443-:8443 -device e1000,netdev=net0

.PHONY: deps build image test-image run check unit e2e test bench clean fuzz fuzz-api

deps:
	@./image-builder/install-deps.sh

build:
	RUSTFLAGS=-Ctarget-feature=+crt-static $(CARGO) build --release --target $(TRIPLE) -p keel-init -p keel-vmm
	$(CARGO) build --release -p keel-image-builder

image: deps build
	$(BUILDER) build --out $(OUT) \
		--bin keel=$(BINDIR)/keel --bin keel-vmm=$(BINDIR)/keel-vmm \
		--cmdline "$(CMDLINE) $(KEEL_CMDLINE)"
	$(BUILDER) media --out $(OUT)

# The test image: the production image plus what the end-to-end tests run inside the host
# (tests/payload: the scenario runner and a guest /init; Debian's cloud kernel as the guest kernel).
TEST_OUT := $(OUT)/test
TEST_OVERLAY := $(TEST_OUT)/overlay
GUEST_OVERLAY := $(TEST_OUT)/guest-overlay
test-image: image
	RUSTFLAGS=-Ctarget-feature=+crt-static $(CARGO) build --release --target $(TRIPLE) -p keel-test-payload
	rm -rf $(TEST_OVERLAY) && mkdir -p $(TEST_OVERLAY)/usr/lib/keel-tests $(TEST_OVERLAY)/usr/bin
	cp -r tests/image/. $(TEST_OVERLAY)/
	cp $(BINDIR)/keel-e2e-runner $(TEST_OVERLAY)/usr/bin/
	cp "$$($(BUILDER) fetch-kernel --which guest)"/boot/vmlinuz-* $(TEST_OVERLAY)/usr/lib/keel-tests/vmlinuz
	# mke2fs and the shared libraries it links, so the guest formats its own disk in the
	# virtio-blk test (its initramfs has no libc otherwise).
	rm -rf $(GUEST_OVERLAY) && mkdir -p $(GUEST_OVERLAY)/sbin
	cp -L "$$(command -v mke2fs)" $(GUEST_OVERLAY)/sbin/mke2fs
	for lib in $$(ldd "$$(command -v mke2fs)" | grep -o '/[^ ]*'); do \
		mkdir -p $(GUEST_OVERLAY)$$(dirname $$lib) && cp -L $$lib $(GUEST_OVERLAY)$$lib || exit 1; done
	$(BUILDER) guest-initramfs --which guest --init $(BINDIR)/keel-guest-init --overlay $(GUEST_OVERLAY) \
		--modules button,evdev,virtio_pci,virtio_blk,virtio_net,virtio-rng --out $(TEST_OVERLAY)/usr/lib/keel-tests/initrd.img
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
	KEEL_OUT=$(OUT) CARGO=$(CARGO) ./tests/run-e2e.py

test: deps check unit e2e

bench: test-image
	@echo "==> image sizes (from out/manifest.json)"
	@$(BUILDER) size-report --manifest $(OUT)/manifest.json
	@echo "==> keel-vmm inside the Keel test image (nested KVM under QEMU/TCG: compare runs, not absolutes)"
	KEEL_OUT=$(OUT) $(CARGO) bench -p keel-tests --bench vmm
	@echo "==> boot media: QEMU start to the ready line (docs/boot-media.md)"
	KEEL_OUT=$(OUT) $(CARGO) bench -p keel-tests --bench media

# libFuzzer targets (vmm/fuzz, a cargo-fuzz crate outside the workspace): keel-vmm's virtio queues
# (guests described with `arbitrary`) and keel-init's parsers of what the network and the kernel
# send, and keel-http's heads and chunked decoder. With nightly and cargo-fuzz: `cd vmm/fuzz && cargo +nightly fuzz run virtio_block`. This
# target needs neither: it builds the targets on stable with the same SanitizerCoverage
# instrumentation cargo-fuzz uses (no AddressSanitizer) and runs each in turn for FUZZ_SECONDS,
# keeping its corpus in target/fuzz-corpus/<target> (some only: make fuzz FUZZ_TARGETS=kmsg_record).
# `cargo test -p keel-vmm` (and keel-init's unit tests) also drive the same entry points with
# deterministic inputs. A new target: a file in vmm/fuzz/fuzz_targets, a [[bin]] in
# vmm/fuzz/Cargo.toml and its name below.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= virtio_rng virtio_block virtio_net \
	dhcp_reply kmsg_record netlink_attrs http_request_head http_response_head http_chunked
FUZZ_RUSTFLAGS := -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
	-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
	-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks
fuzz:
	cd vmm/fuzz && RUSTFLAGS="$(FUZZ_RUSTFLAGS)" $(CARGO) build --release --target $(TRIPLE) \
		$(addprefix --bin ,$(FUZZ_TARGETS))
	for t in $(FUZZ_TARGETS); do mkdir -p $(CARGO_TARGET_DIR)/fuzz-corpus/$$t && \
		$(CARGO_TARGET_DIR)/$(TRIPLE)/release/$$t -max_total_time=$(FUZZ_SECONDS) -max_len=16384 \
			$(CARGO_TARGET_DIR)/fuzz-corpus/$$t || exit 1; done

# schemathesis (PyPI) against the agent's OpenAPI document; not part of `make test`.
fuzz-api:
	./tests/fuzz-api.sh

clean:
	$(CARGO) clean
	rm -rf $(OUT) .cache/keel
