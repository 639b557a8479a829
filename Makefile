# Two entry points for a fresh machine (Python 3.11+ with venv):
#   make demo   install, then run the whole workflow offline on the generated demo set
#   make test   install, then run the test suite
# `make install` installs exactly the pins of requirements.lock (then sslseg itself,
# editable, without dependencies); `make lock` re-resolves pyproject.toml's ranges
# and rewrites requirements.lock and envs/sslseg.yaml.
VENV ?= .venv
LOCK := requirements.lock
PY := $(VENV)/bin/python
SNAKEMAKE := PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/snakemake --workflow-profile workflow/profiles/default

.PHONY: install lock demo test sample report clean-demo

$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $@

install: $(VENV)/.installed

lock:
	tools/lock.sh

demo: install
	$(SNAKEMAKE) --configfile workflow/configs/demo.yaml
	$(SNAKEMAKE) --configfile workflow/configs/demo.yaml --report results/demo/report.html

sample: install
	$(SNAKEMAKE) --configfile workflow/configs/sample.yaml

test: install
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest

clean-demo:
	rm -rf results/demo
