"""Reporting: figures (the only package that imports matplotlib) and, later, the HTML report."""
