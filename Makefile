.PHONY: install demo test lint bench check-wheel

install:
	bash scripts/install.sh

demo: install
	.venv/bin/mrag demo

test: install
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/mypy

bench:
	.venv/bin/python benchmarks/bench_core.py

check-wheel:
	bash scripts/check_wheel.sh
