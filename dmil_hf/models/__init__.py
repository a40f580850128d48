"""Model units, one folder each, laid out as transformers' own `models/<name>/` folders."""
