"""Test doubles (fake servers) for dsv3ctl tests."""
