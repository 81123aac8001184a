"""Helpers shared by the tests (fake datasets in their real file formats)."""
