"""Unit tests of sig2knock: deterministic, no root, no network."""
