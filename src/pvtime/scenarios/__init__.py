"""Embedded scenario files (TOML); `pvtime scenarios` lists them."""
