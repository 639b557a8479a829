# Two entry points for a fresh machine (Python 3.10+ with venv):
#   make demo   install, then run the whole workflow offline on the generated demo set
#   make test   install, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
SNAKEMAKE := PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/snakemake --workflow-profile workflow/profiles/default

.PHONY: install demo test sample report clean-demo

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(SNAKEMAKE) --configfile workflow/configs/demo.yaml
	$(SNAKEMAKE) --configfile workflow/configs/demo.yaml --report results/demo/report.html

sample: install
	$(SNAKEMAKE) --configfile workflow/configs/sample.yaml

test: install
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m pytest

clean-demo:
	rm -rf results/demo
