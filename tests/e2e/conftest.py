"""tests/e2e holds inputs of the browser test (tests/test_browser_e2e.py), not tests.

The fixture notebook here is committed without outputs and is run only inside JupyterLab by the
browser test, so `pytest --nbval` must not collect it as a notebook test.
"""
collect_ignore_glob = ["*.ipynb"]
