"""Helpers the tests share; imported by tests, never from conftest.py."""
