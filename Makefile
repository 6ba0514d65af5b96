# Set-up and run, on a fresh Debian machine or an existing one: `make demo`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Opus and PortAudio for calls; iproute2, nftables, conntrack and ethtool for the lab; espeak-ng
# for speech; coturn to interoperate with (its turnserver and test clients, started only by tests);
# stun-client, Debian's RFC 3489 client, to check natcheck against; miniupnpd-nftables for lab
# routers that map ports on request (NAT-PMP, PCP); redis-server for rendezvous servers sharing
# presence (--redis), started only by tests and benches; gcc to build the relay's C forwarder.
SYSLIBS := libopus0 libportaudio2 iproute2 nftables conntrack ethtool espeak-ng coturn stun-client \
	miniupnpd-nftables redis-server gcc

.PHONY: demo test lint fuzz sys-deps venv clean bpf

# The lab (real NATs in network namespaces) needs Linux and root; elsewhere, the loopback demo.
demo: $(STAMP)
	@reason=$$($(BIN)/python -c 'from voip.lab.netns import lab_unavailable_reason as r; print(r() or "")'); \
	if [ -z "$$reason" ]; then \
		echo "running callpeer lab: alice and bob behind two NAT routers"; $(BIN)/callpeer lab; \
	else \
		echo "callpeer lab cannot run here ($$reason); running callpeer demo on loopback instead"; \
		$(BIN)/callpeer demo; \
	fi

test: lint
	$(BIN)/pytest

# ruff, strict mypy, and the import contract (pyproject.toml: layers point one way)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Every parser of untrusted bytes fed mutated real packets (bench/fuzz.py), a million inputs each
# unless FUZZ_ARGS says otherwise (e.g. FUZZ_ARGS="--inputs 100000 --only stun,rtp"); fails if
# anything but a parser's own error escapes.
fuzz: $(STAMP)
	$(BIN)/python bench/fuzz.py $(FUZZ_ARGS)

# System libraries: installed with apt-get when we are root on Debian and they are missing;
# otherwise we say what is missing (callpeer still runs; it names what it cannot use).
sys-deps:
	@./scripts/sys-deps.sh $(SYSLIBS)

# setup.py builds the relay's C forwarder: a changed source is built again.
$(STAMP): pyproject.toml setup.py rendezvous/channel_forward.c | sys-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The kernel fast path (callpeer-rendezvous --offload) ships pre-built; after changing its source,
# rebuild it here (needs clang and libbpf-dev) and commit both files.
bpf:
	clang -O2 -g -target bpf -I/usr/include/$$(gcc -print-multiarch) \
		-c rendezvous/bpf/channel_relay.c -o rendezvous/bpf/channel_relay.o
	llvm-strip -g rendezvous/bpf/channel_relay.o
	sha256sum rendezvous/bpf/channel_relay.c | cut -d' ' -f1 > rendezvous/bpf/channel_relay.o.sha256

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache rendezvous/_channel_forward.*.so
