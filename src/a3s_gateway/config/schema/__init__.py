"""Declarative configuration schemas: the engine, shared value checks, and one module per block family."""
