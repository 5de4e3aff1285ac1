"""Backends: one small interface (see ``base``), one module per framework, imported lazily."""
