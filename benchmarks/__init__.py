"""Benchmarks: ``python -m benchmarks.run [--quick]`` measures the service against its ceilings.

Every figure is measured in one run, on 127.0.0.1, against the project's sandbox as the Graph API,
next to the ceiling it is judged by (a bare app, a raw client) and a plain Celery baseline. See
``benchmarks/run.py`` for what each figure means and how it is measured.
"""
