# labfleet: `make help` lists the targets.
SHELL := /bin/bash
export CGO_ENABLED := 0
GO ?= go
BIN := bin
OUT := _out
KEYS := $(OUT)/keys

.DEFAULT_GOAL := help

.PHONY: help
help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## install Debian packages, pinned lab assets and host tools (idempotent)
	bash hack/install-deps.sh

# imagectl alone is built with cgo: PKCS#11 modules (HSM signing) are C
# libraries. Everything else, labos above all, stays CGO_ENABLED=0 (static).
.PHONY: build
build: ## build imagectl, labctl and fleetctl into bin/
	$(GO) build -trimpath -o $(BIN)/ ./lab/cmd/labctl ./fleetctl/cmd/fleetctl
	CGO_ENABLED=1 $(GO) build -trimpath -o $(BIN)/ ./images/cmd/imagectl

$(KEYS)/uki-signing-key.pem: | build
	$(BIN)/imagectl keys generate --dir $(KEYS)

.PHONY: keys
keys: $(KEYS)/uki-signing-key.pem ## generate the lab's keys in _out/keys (never overwrites)

.PHONY: labbase
labbase: build ## build the lab base (Debian kernel + labos initramfs) as an OCI layout in _out/labbase/oci
	$(BIN)/labctl base build --out $(OUT)/labbase

.PHONY: images
images: keys labbase ## build every definition whose inputs are offline (images/lab.yaml) into _out/<name>/
	$(BIN)/imagectl build images/lab.yaml
	@echo "images/edge.yaml needs ghcr.io (Talos's imager image): build it with 'bin/imagectl build images/edge.yaml' where the registry is reachable"

.PHONY: demo
demo: deps images ## the main job: build the lab image and boot it under Secure Boot + TPM, twice (HUB=1: through the fleet hub, no inbound port)
ifeq ($(HUB),1)
	BIN=$(BIN) OUT=$(OUT) KEYS=$(KEYS) bash hack/demo-hub.sh
else
	$(BIN)/labctl demo $(OUT)/labos/disk.raw --keys $(KEYS) --talosconfig $(KEYS)/talosconfig
endif

.PHONY: test
test: ## run all tests: unit + HSM tests in the background, harness then emulated-hardware scenarios (qemu-tests) beside them; prints each phase's time and the total
	GO=$(GO) OUT=$(OUT) bash hack/test.sh

SOAK ?= 10

# Packages whose HSM tests (SoftHSM2 through crypto11) need cgo; they run a
# second time with CGO_ENABLED=1, only those tests (-run).
CGO_PKGS := ./images/build/ ./images/cmd/imagectl/ ./images/keys/...

.PHONY: soak
soak: ## long runs: each power-cut point of the qemu-tests SOAK times (default 10)
	@mkdir -p $(OUT)
	set -o pipefail; QEMU_TESTS_SOAK=$(SOAK) $(GO) test -count=1 -timeout 180m -v -run 'TestPowerLoss' ./qemu-tests/ 2>&1 | tee $(OUT)/soak.log

.PHONY: soak-fleetctl
soak-fleetctl: ## long runs: fleetctl's kill -9 crash test with SOAK x 40 seeded trials (default 400)
	@mkdir -p $(OUT)
	set -o pipefail; FLEETCTL_SOAK=$(SOAK) $(GO) test -count=1 -timeout 180m -v -run 'TestCrashAndResume' ./fleetctl/cmd/fleetctl/ 2>&1 | tee $(OUT)/soak-fleetctl.log

.PHONY: unit
unit: ## unit tests only (no VMs)
	$(GO) test -count=1 -timeout 20m $$($(GO) list ./... | grep -v -e /qemu-tests -e /lab/harness)
	CGO_ENABLED=1 $(GO) test -count=1 -timeout 20m -run 'HSM|PKCS11' $(CGO_PKGS)

.PHONY: bench
bench: build ## performance report (builder, add-ons, boot, fleetctl) into _out/bench.md
	bash hack/bench.sh | tee $(OUT)/bench.md

.PHONY: fmt
fmt: ## gofmt and go vet
	gofmt -l -w .
	$(GO) vet ./...

.PHONY: clean
clean: ## remove build outputs (keeps _out/keys and the asset cache)
	rm -rf $(BIN) $(OUT)/labbase $(OUT)/labos $(OUT)/lab
