"""Renderers over result records: text reports, plots and (in tables.py) rich tables."""
