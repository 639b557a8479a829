# Two entry points for a fresh machine (Python 3.11+ with venv):
#   make demo   install, then run the whole workflow offline on the generated demo set
#   make test   install, then run the test suite
# `make install` (tools/install.sh) installs exactly the pins of requirements.lock on the
# machine it was resolved for (its "# Resolved for:" line), elsewhere pyproject.toml's
# ranges; `make lock` re-resolves those ranges and rewrites requirements.lock and
# envs/sslseg.yaml.
VENV ?= .venv
LOCK := requirements.lock
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake --workflow-profile workflow/profiles/default

.PHONY: install lock demo test sample sample-long sample-b sample-c sample-d fidelity report clean-demo

$(VENV)/.installed: pyproject.toml $(LOCK)
	tools/install.sh $(VENV) $(LOCK)
	touch $@

install: $(VENV)/.installed

lock:
	tools/lock.sh

demo: install
	$(SNAKEMAKE) --configfile workflow/configs/demo.yaml
	$(SNAKEMAKE) --configfile workflow/configs/demo.yaml --report results/demo/report.html

sample: install
	$(SNAKEMAKE) --configfile workflow/configs/sample.yaml

sample-long: install
	$(SNAKEMAKE) --configfile workflow/configs/sample.yaml workflow/configs/sample-long.yaml

sample-b: install
	$(SNAKEMAKE) --configfile workflow/configs/sample-b.yaml

sample-c: install
	$(SNAKEMAKE) --configfile workflow/configs/sample-c.yaml

sample-d: install
	$(SNAKEMAKE) --configfile workflow/configs/sample-d.yaml

fidelity: install
	$(SNAKEMAKE) --configfile workflow/configs/fidelity.yaml
	cat results/fidelity/report/published.md

test: install
	$(PY) -m pytest

clean-demo:
	rm -rf results/demo
