# The two commands README shows: `make run` (set up, then the editor on the demo model) and `make test`.
.PHONY: setup run test test-python test-frontend bench

PORT ?= 7860

setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/lazyedit serve --model demo --device cpu --port $(PORT)

test: setup
	$(MAKE) --no-print-directory test-frontend
	$(MAKE) --no-print-directory test-python

test-python:
	.venv/bin/python -m pytest -q tests

test-frontend:
	cd frontend && npm test --silent

bench:
	.venv/bin/lazyedit bench --config demo --size 1024 --json bench.json --plot bench.png
